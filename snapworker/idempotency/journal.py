"""The call journal: an intent row before each batch-create call, an outcome row after it, per keyed request.

:class:`~snapworker.runtime.calls.BatchCaller` calls :meth:`CallJournal.before_call` before a batch's first call and
:meth:`CallJournal.after_call` with the batch's outcome; each is one store write for every request the batch
serves (those whose desktops it carries, and those that joined them while it was in flight). The core stays
sans-I/O: the journal only reads which requests wait on a batch (``BatchingCore.waiting``).

If the intent cannot be written, the call is not made: the journal retries every IDEMPOTENCY_HOLD_S until the
batch's deadline (its requests stay held meanwhile), then the batch fails with ``SNAPWORKER.STORE_UNAVAILABLE``
(retryable, nothing created). If the outcome cannot be written, the results are published anyway (they are
the truth; a later redelivery reconciles against the API instead of trusting the record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from snapworker.contract.models import ResultError
from snapworker.core import Batch, BatchingCore, Outcome
from snapworker.errors import StoreUnavailable
from snapworker.failpoints import failpoint
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.store import INTENT, OUTCOME, IdempotencyStore, Row, entry_body, json_strings

__all__ = ["RENEW_AFTER_S", "TRY_WINDOW_S", "CallJournal", "Keyed", "lease_s"]

log = logging.getLogger("snapworker.idempotency")

Ticket = Hashable
_OUTCOME_TRIES = 3


@dataclass(frozen=True, slots=True)
class Keyed:
    """A request's key in the store (namespaced request id) and its fingerprint."""

    key: str
    fingerprint: str


#: An intent older than this (on the loop's clock) is written again before the next try of its call: the
#: renewal that keeps the attempt's lease (see :func:`lease_expiry`).
RENEW_AFTER_S = 2.0
#: No try of a call starts later than this after its intent was last written: when it cannot be renewed (the
#: store is down), the call stops there, and its requests fail retryable, nothing sent.
TRY_WINDOW_S = 5.0


def lease_s(connect_timeout_s: float, read_timeout_s: float) -> float:
    """How long after an intent was last written its call may still be running: a try may start up to
    TRY_WINDOW_S after the write, then connect and wait for its answer. Another worker that finds the intent
    holds the request until then (and RECONCILE_DELAY_S more) before it reconciles: it never lists the
    snapshots of a call that may still be made."""
    return TRY_WINDOW_S + connect_timeout_s + read_timeout_s


@dataclass(slots=True)
class _Attempt:
    id: str
    requests: dict[Ticket, tuple[Keyed, tuple[str, ...]]]  # who the call serves, and which of its desktops
    written_at: float = 0.0  # when the intent was last written (the loop's clock)


class CallJournal:
    """Writes intents and outcomes; knows which keys have a call in flight in this process."""

    def __init__(self, store: IdempotencyStore, core: BatchingCore, health: StoreHealth, *, hold_s: float) -> None:
        self._store = store
        self._core = core
        self._health = health
        self._hold_s = hold_s
        self.keyed: dict[Ticket, Keyed] = {}
        self._attempts: dict[int, _Attempt] = {}
        self._in_flight: dict[str, int] = {}  # key -> calls in flight for it here
        self._settled: dict[str, asyncio.Event] = {}  # key -> set when its calls here are all recorded

    # -- the requests the journal keeps rows for
    def register(self, ticket: Ticket, keyed: Keyed) -> None:
        self.keyed[ticket] = keyed

    def forget(self, tickets: Iterable[Ticket]) -> None:
        for ticket in tickets:
            self.keyed.pop(ticket, None)

    def in_flight(self, key: str) -> asyncio.Event | None:
        """An event set once this process has recorded the outcome of every call in flight for ``key``; None
        when there is none (the store's rows are then all there is to know)."""
        if key not in self._in_flight:
            return None
        return self._settled.setdefault(key, asyncio.Event())

    # -- the sender's hooks
    async def before_call(self, batch: Batch, deadline: float | None, attempt_id: str) -> Outcome | None:
        """Record the intent of every keyed request ``batch`` serves, under ``attempt_id`` (the calls' marker
        names it: reconciliation finds the attempt's snapshots by it); None: go ahead and call. An outcome: do
        not call (the store stayed unavailable until ``deadline``, on the loop's clock; or nobody waits for the
        batch any more, before or after the intent was written: its requests' broker session was lost, they are
        redelivered, and a call now would race the worker that gets them)."""
        if not self._core.waiting(batch):
            return (_nobody_waits(batch),)
        attempt = _Attempt(attempt_id, {})
        now = time.time()
        rows = []
        keyed_of = self.keyed.get
        for ticket, desktops in self._core.waiting(batch).items():
            keyed = keyed_of(ticket)
            if keyed is not None:
                attempt.requests[ticket] = (keyed, desktops)
                rows.append(Row(keyed.key, keyed.fingerprint, INTENT, attempt.id, json_strings(desktops), now))
        loop = asyncio.get_running_loop()
        while rows:
            try:
                await self._health.timed(self._store.record_intent(rows))
                break
            except StoreUnavailable as exc:
                if deadline is not None and loop.time() + self._hold_s >= deadline:
                    log.error("batch %d not sent: the idempotency store stayed unavailable (%s)", batch.id, exc)
                    return (_store_unavailable(batch, exc),)
                log.warning("batch %d waits: cannot record its intent (%s); trying again", batch.id, exc)
                await asyncio.sleep(self._hold_s)
        attempt.written_at = loop.time()
        self._attempts[batch.id] = attempt
        for keyed, _ in attempt.requests.values():
            self._in_flight[keyed.key] = self._in_flight.get(keyed.key, 0) + 1
        if not self._core.waiting(batch):
            # recorded as not sent: a redelivery then neither waits for this intent's lease nor lists for it
            refused = (_nobody_waits(batch),)
            await self._record(batch, refused)
            return refused
        failpoint("after_intent_before_api")
        return None

    async def renew(self, batch: Batch) -> bool:
        """Keep the lease of ``batch``'s intent for one more try (see :func:`lease_s`): write the intent again
        if it is older than RENEW_AFTER_S. False: the try must not go (the intent could not be renewed and is
        older than TRY_WINDOW_S, so another worker may soon treat the call as over)."""
        attempt = self._attempts.get(batch.id)
        if attempt is None or not attempt.requests:
            return True
        loop = asyncio.get_running_loop()
        if loop.time() - attempt.written_at < RENEW_AFTER_S:
            return True
        now = time.time()
        rows = [
            Row(keyed.key, keyed.fingerprint, INTENT, attempt.id, json_strings(desktops), now)
            for keyed, desktops in attempt.requests.values()
        ]
        try:
            await self._health.timed(self._store.record_intent(rows))
        except StoreUnavailable as exc:
            fresh = loop.time() - attempt.written_at < TRY_WINDOW_S
            log.warning("batch %d: cannot renew its intent (%s)%s", batch.id, exc, "" if fresh else ": not sent")
            return fresh
        attempt.written_at = loop.time()
        return True

    def abandon(self, batch: Batch) -> None:
        """The batch's sending was cancelled: nothing more is recorded for it (its intent stays, and a
        redelivery reconciles it once its lease has passed), and its keys no longer count as in flight here."""
        attempt = self._attempts.pop(batch.id, None)
        if attempt is not None:
            self._landed([keyed.key for keyed, _ in attempt.requests.values()])

    async def after_call(self, batch: Batch, outcome: Outcome) -> None:
        """Record what ``outcome`` says of each request's desktops (one write), before results are published."""
        failpoint("after_api_before_record")
        await self._record(batch, outcome)
        failpoint("after_record_before_publish")

    async def _record(self, batch: Batch, outcome: Outcome) -> None:
        attempt = self._attempts.pop(batch.id, None)
        if attempt is None:
            return
        now = time.time()
        rows = []
        requests = attempt.requests
        announced = [keyed.key for keyed, _ in requests.values()]  # counted in flight by before_call
        for ticket, desktops in self._core.waiting(batch).items():  # joined while the call was in flight
            keyed = self.keyed.get(ticket)
            if keyed is not None and ticket not in requests:
                # its intent is recorded with the outcome: a store finds outcomes through their intents
                requests[ticket] = (keyed, desktops)
                rows.append(Row(keyed.key, keyed.fingerprint, INTENT, attempt.id, json_strings(desktops), now))
        by_desktop = {d: entry for entry in outcome for d in entry.desktop_ids}
        # Each entry is serialized once per call; a request's row only names its desktops beside it. Usually a
        # call has one entry (its job), so every request's body is that entry plus its own desktops.
        quoted = {id(entry): encode_basestring_ascii(entry_body(entry)) for entry in outcome}
        single = quoted[id(outcome[0])] if len(outcome) == 1 else None
        for keyed, desktops in requests.values():
            if single is not None and all(d in by_desktop for d in desktops):
                body = f"[[{single},{json_strings(desktops)}]]"
            else:
                groups: dict[int, list[str]] = {}
                for desktop_id in desktops:
                    entry = by_desktop.get(desktop_id)
                    if entry is not None:  # a desktop without an outcome stays announced: reconciled if redelivered
                        groups.setdefault(id(entry), []).append(desktop_id)
                body = "[" + ",".join(f"[{quoted[e]},{json_strings(ds)}]" for e, ds in groups.items()) + "]"
            rows.append(Row(keyed.key, keyed.fingerprint, OUTCOME, attempt.id, body, now))
        try:
            for tries in range(1, _OUTCOME_TRIES + 1):
                try:
                    await self._health.timed(self._store.record_outcome(rows))
                    break
                except StoreUnavailable as exc:
                    if tries == _OUTCOME_TRIES:
                        log.warning("outcome of batch %d not recorded (%s): results go out anyway", batch.id, exc)
                    else:
                        await asyncio.sleep(min(self._hold_s, 1.0))
        finally:
            self._landed(announced)

    def _landed(self, keys: Iterable[str]) -> None:
        for key in keys:
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
                continue
            self._in_flight.pop(key, None)
            event = self._settled.pop(key, None)
            if event is not None:
                event.set()


def _store_unavailable(batch: Batch, exc: StoreUnavailable) -> ResultError:
    return ResultError(
        desktop_ids=batch.desktop_ids,
        http_status=None,
        error_code="SNAPWORKER.STORE_UNAVAILABLE",
        error_msg=f"not sent: the idempotency store was unavailable until the deadline: {exc}"[:2000],
        retryable=True,
    )


def _nobody_waits(batch: Batch) -> ResultError:
    log.info("batch %d not sent: none of its requests is held any more (they return to the queue)", batch.id)
    return ResultError(
        desktop_ids=batch.desktop_ids,
        http_status=None,
        error_code="SNAPWORKER.NOT_SENT",
        error_msg="not sent: the requests of this batch were given back to the broker before the call",
        retryable=True,
    )
