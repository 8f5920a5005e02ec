"""The worker pauses while the API refuses its credential, and resumes by itself once it works again.

An expired or wrong token fails every call, so answering requests with that error would fail them all for good
(IAM tokens expire every 24 hours: this happens in production). It is a fault of the worker instead:

- one ERROR line names the credential and the API's answer; ``/readyz`` answers 503 with the same reason;
- the worker stops consuming and sends no new call; requests not sent yet return to the queue (the broker session
  closes, see :mod:`.sessions`); those whose call was refused are answered ``retryable: true``;
- every ``retry_s`` (doubling up to ``max_retry_s``) each refused credential is probed with one cheap read (which
  reads SNAPWORKER_AUTH_TOKEN_FILE again first); when every one is accepted, one INFO line, and consuming resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from snapworker.cloud.credential import Probe
from snapworker.errors import ApiCredentialRefused, ApiError

__all__ = ["CredentialPause"]

log = logging.getLogger("snapworker.worker")

FIRST_RETRY_S = 5.0
MAX_RETRY_S = 30.0


@dataclass(slots=True)
class _Refusal:
    reason: str
    probe: Probe


class CredentialPause:
    """The credentials the API refuses now (a :class:`~snapworker.cloud.credential.CredentialWatch`).

    ``serving`` is set while none is refused; ``refusing`` while one is. ``await run()`` probes the refused ones
    until cancelled."""

    def __init__(self, *, retry_s: float = FIRST_RETRY_S, max_retry_s: float = MAX_RETRY_S) -> None:
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._refused: dict[str, _Refusal] = {}
        self.serving = asyncio.Event()
        self.serving.set()
        self.refusing = asyncio.Event()
        self.pauses = 0  # times the worker paused (for the totals and tests)

    @property
    def reason(self) -> str | None:
        """Why the worker is paused (for ``/readyz`` and logs), or None while serving."""
        if not self._refused:
            return None
        return "; ".join(f"{who}: {refusal.reason}" for who, refusal in sorted(self._refused.items()))

    def refused(self, who: str, error: ApiCredentialRefused, probe: Probe) -> None:
        reason = f"the API refused the credential ({error.http_status} {error.error_code}: {error})"
        first = not self._refused
        known = who in self._refused
        self._refused[who] = _Refusal(reason, probe)
        if known:
            return
        if first:
            self.pauses += 1
        self.serving.clear()
        self.refusing.set()
        log.error(
            "credential %r refused by the API (%s %s: %s): consuming stops, requests not sent return to the "
            "queue, and it is tried again every %.0f-%.0f s (set a new SNAPWORKER_AUTH_TOKEN_FILE token, or fix "
            "the credential and restart)",
            who,
            error.http_status,
            error.error_code,
            error,
            self._retry_s,
            self._max_retry_s,
            extra={"credential": who, "http_status": error.http_status, "error_code": error.error_code},
        )

    async def run(self) -> None:
        """Probe refused credentials until cancelled (see the module)."""
        while True:
            await self.refusing.wait()
            wait_s = self._retry_s
            while self._refused:
                await asyncio.sleep(wait_s)
                await self.probe_all()
                wait_s = min(wait_s * 2, self._max_retry_s)

    async def probe_all(self) -> None:
        """Probe every refused credential once; clear those the API accepts now."""
        for who, refusal in list(self._refused.items()):
            try:
                await refusal.probe()
            except ApiCredentialRefused:
                continue  # the probe reported it again: still refused
            except ApiError as exc:
                log.info("credential %r not checked (%s): trying again later", who, exc)
                continue
            if self._refused.get(who) is refusal:
                del self._refused[who]
                log.info("credential %r accepted by the API again", who, extra={"credential": who})
        if not self._refused:
            self.refusing.clear()
            if not self.serving.is_set():
                log.info("every credential works: consuming resumes")
            self.serving.set()

    async def wait_serving(self, stopping: asyncio.Event) -> None:
        """Until no credential is refused, or ``stopping`` is set."""
        if self.serving.is_set():
            return
        stop = asyncio.ensure_future(stopping.wait())
        serve = asyncio.ensure_future(self.serving.wait())
        try:
            await asyncio.wait({stop, serve}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, serve):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
