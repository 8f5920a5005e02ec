"""Sending one batch: the API call, and isolating what the API rejected down to the desktop.

A batch merges several requests. When the API rejects it with 400, 404 or 409, a desktop is probably to blame
(an unknown or busy one), and failing every desktop of the batch for it would punish the innocent. So:

- **The answer names the culprit** (Huawei's messages carry the ID at fault): the named desktops are set aside
  and the rest is sent again, one extra call.
- **It names none**: the call is split in two and the halves are sent again, recursively: along request
  boundaries while it holds several requests, then inside the one request. Two extra calls per split.

Both spend one budget of ``max_extra_calls`` (ISOLATE_MAX_EXTRA_CALLS) per batch; once it is spent, the desktops
left share the error (those known innocent, because another desktop was named, say ``retryable: true``).

**A busy desktop** (409) is not failed at once: it is sent again on its own after a delay (``busy_delay_s``,
doubling up to ``busy_max_delay_s``) until the request's ``deadline`` or ``busy_retry_max_s`` after the batch was
sent, whichever is first; only then is it reported, with the 409 and ``retryable: true``. These tries do not
spend the isolation budget: they are bounded by time, and each waits for the rate limiter like any call.

Never for 401/403 (credentials), 429 (throttling) or 5xx: no desktop causes those, and sending them split would
only multiply the load. The client has retried those already.

**A call the API may have processed** (its answer lost: ``maybe_created``) is never sent again blindly. Every call
of a batch's attempt writes the attempt's marker where the request left a description empty
(:mod:`snapworker.domain.snapshots`); ``reconcile_delay_s`` after the loss, the desktops' snapshots are listed
(``reconciler``): the ones the attempt made are answered with them (``reconciled:<snapshot_id>``), the ones it did
not make are sent again while the call's ``max_tries`` (RETRY_MAX_TRIES, shared by the tries before and after each
loss) leave a try, and the ones the listing cannot tell fail ``maybe_created`` (``SNAPWORKER.UNRECONCILED``). Only
while the deadline leaves room for the listing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant
from snapworker.cloud.responses import is_busy, named_desktops
from snapworker.contract.models import JobEntry
from snapworker.core import Batch, MergeKey, Outcome, OutcomeEntry
from snapworker.domain.snapshots import Doubt, given_name, marked_disks, marker
from snapworker.errors import ApiAuthError, ApiClientError, ApiError
from snapworker.runtime.call_parts import Journal, Reconcile, SnapshotApi, error_entry, internal_error

__all__ = ["BatchCaller"]

log = logging.getLogger("snapworker.sending")

_ISOLATABLE = frozenset({400, 404, 409})

Segments = list[tuple[str, ...]]


def _isolatable(exc: ApiError) -> bool:
    return isinstance(exc, ApiClientError) and not isinstance(exc, ApiAuthError) and exc.http_status in _ISOLATABLE


def _flat(segments: Segments) -> list[str]:
    return [d for segment in segments for d in segment]


def _keep(segments: Segments, wanted: Callable[[str], bool]) -> Segments:
    """The desktops ``wanted`` keeps, still grouped by request; empty groups dropped."""
    kept = [tuple(d for d in segment if wanted(d)) for segment in segments]
    return [segment for segment in kept if segment]


def _halves(segments: Segments) -> tuple[Segments, Segments] | None:
    """Two halves to send apart: along request boundaries if there are several requests, else inside the one."""
    if len(segments) >= 2:
        half = len(segments) // 2
        return segments[:half], segments[half:]
    if len(segments) == 1 and len(segments[0]) >= 2:
        only = segments[0]
        half = len(only) // 2
        return [only[:half]], [only[half:]]
    return None


@dataclass(slots=True)
class _Sending:
    """One batch's sending: what all its calls share."""

    key: MergeKey
    budget: int  # extra calls left for isolation
    deadline: float | None
    busy_until: float | None  # busy desktops are tried again until then; None: not at all
    marker: str  # what the attempt's calls write as the description of undescribed disks
    lease: CallLease | None  # asked before every try: see snapworker.cloud.lease


class BatchCaller:
    """Turns a batch into its outcome: one entry per call that settled some of its desktops.

    ``clock`` (the deadline's clock: the loop's monotonic time), ``wall_clock`` (POSIX time, compared with the
    API's create_time), ``sleep`` and ``attempt_id`` are for tests.
    """

    def __init__(
        self,
        api: SnapshotApi,
        *,
        max_extra_calls: int,
        max_tries: int = 8,
        busy_retry_max_s: float | None = None,
        busy_delay_s: float = 5.0,
        busy_max_delay_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        attempt_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        journal: Journal | None = None,
        reconciler: Reconcile | None = None,
        reconcile_delay_s: float = 5.0,
    ) -> None:
        self._api = api
        self._max_tries = max_tries
        self._journal = journal
        self._reconciler = reconciler
        self._reconcile_delay_s = reconcile_delay_s
        self._wall_clock = wall_clock
        self._attempt_id = attempt_id
        self._max_extra_calls = max_extra_calls
        self._busy_retry_max_s = busy_retry_max_s
        self._busy_delay_s = busy_delay_s
        self._busy_max_delay_s = busy_max_delay_s
        self._clock = clock
        self._sleep = sleep

    async def send(
        self,
        batch: Batch,
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        lease: CallLease | None = None,
    ) -> Outcome:
        """Never raises but for cancellation: failures are entries of the outcome (an unexpected exception is
        ``SNAPWORKER.INTERNAL``, ``maybe_created``: where it struck is not known).

        ``grant`` is the limiter's permission for the batch's first call (the others wait for their own);
        ``deadline`` bounds every call (see WorkspaceClient.batch_create) and the retries of busy desktops;
        ``lease`` is asked before every try, and once it lapses no try is sent (``SNAPWORKER.NOT_SENT``).
        With a ``journal``, its intent is recorded before the first call and the outcome after the last,
        whatever the outcome.
        """
        limits = [deadline]
        if self._busy_retry_max_s is not None:
            limits.append(self._clock() + self._busy_retry_max_s)
        busy_until = min((t for t in limits if t is not None), default=None)
        attempt = self._attempt_id()
        sending = _Sending(batch.key, self._max_extra_calls, deadline, busy_until, marker(attempt), lease)
        if self._journal is None:
            return await self._outcome(batch, sending, grant)
        try:
            refused = await self._journal.before_call(batch, deadline, attempt)
        except BaseException:
            refused = None
            if grant is not None:
                self._api.limiter.release()  # the granted call is not made: its place goes to the next
            raise
        if refused is not None:
            if grant is not None:
                self._api.limiter.release()
            return refused
        try:
            outcome = await self._outcome(batch, sending, grant)
        except BaseException:  # cancelled: the journal must not count the attempt in flight for ever
            self._journal.abandon(batch)
            raise
        await self._journal.after_call(batch, outcome)
        return outcome

    async def _outcome(self, batch: Batch, sending: _Sending, grant: Grant | None) -> Outcome:
        try:
            return tuple(await self._send(sending, list(batch.segments), grant))
        except Exception as exc:  # a bug, or a failure no adapter translated: the batch still gets an outcome
            log.exception("sending batch %d failed unexpectedly", batch.id)
            return (internal_error(batch.desktop_ids, exc),)

    async def _send(
        self,
        sending: _Sending,
        segments: Segments,
        grant: Grant | None,
        busy_tries: int = 0,
        tries_left: int | None = None,
    ) -> list[OutcomeEntry]:
        """``tries_left``: what a lost answer left of the call's tries (None: a call of its own, all of them)."""
        desktop_ids = _flat(segments)
        sent_at = self._wall_clock()
        try:
            created = await self._api.batch_create(
                sending.key,
                desktop_ids,
                grant=grant,
                deadline=sending.deadline,
                marker=sending.marker,
                max_tries=tries_left,
                lease=sending.lease,
            )
        except ApiError as exc:
            if exc.maybe_created:
                left = (self._max_tries if tries_left is None else tries_left) - exc.tries
                return await self._recover(sending, segments, exc, sent_at, busy_tries, left)
            if not _isolatable(exc):
                return [error_entry(desktop_ids, exc)]
            return await self._isolate(sending, segments, exc, busy_tries)
        return [JobEntry(job_id=created.job_id, desktop_ids=tuple(desktop_ids))]

    async def _recover(
        self, sending: _Sending, segments: Segments, exc: ApiError, sent_at: float, busy_tries: int, tries_left: int
    ) -> list[OutcomeEntry]:
        """The outcome of desktops whose call may have been processed (``exc.maybe_created``): list their
        snapshots, answer the ones the attempt made, send again the ones it did not while ``tries_left`` (see the
        module)."""
        desktop_ids = _flat(segments)
        room = sending.deadline is None or self._clock() + self._reconcile_delay_s < sending.deadline
        if self._reconciler is None or not room:
            return [error_entry(desktop_ids, exc)]
        log.warning(
            "call of %d desktops for project %s may have been processed (%s): listing their snapshots in %.0f s "
            "before any is sent again",
            len(desktop_ids),
            sending.key.project_id,
            exc.error_code,
            self._reconcile_delay_s,
            extra={"project_id": sending.key.project_id, "error_code": exc.error_code},
        )
        await self._sleep(self._reconcile_delay_s)  # the API may still be recording a call it was processing
        markers = frozenset({sending.marker}) if marked_disks(sending.key) else frozenset()
        doubt = Doubt(markers, sent_at, given_name(sending.key))
        checked = await self._reconciler.check(sending.key, dict.fromkeys(desktop_ids, doubt))
        entries: list[OutcomeEntry] = list(checked.entries(why=f"{exc.error_code}: {exc}"))
        absent = set(checked.absent)
        if absent and tries_left >= 1:
            entries += await self._send(sending, _keep(segments, absent.__contains__), None, busy_tries, tries_left)
        elif absent:  # out of tries: the listing showed these were not created
            unsent = error_entry(sorted(absent, key=desktop_ids.index), exc).model_copy(update={"maybe_created": False})
            entries.append(unsent)
        return entries

    async def _isolate(
        self, sending: _Sending, segments: Segments, exc: ApiError, busy_tries: int
    ) -> list[OutcomeEntry]:
        """The outcome of desktops whose call ``exc`` rejected (400/404/409): blame whom the answer names (or the
        one desktop sent) and send the rest again, or split the call in two, or, out of budget, blame them all."""
        desktop_ids = _flat(segments)
        named = named_desktops(exc, desktop_ids) or (desktop_ids if len(desktop_ids) == 1 else [])
        if named:
            blamed = set(named)
            culprits = _keep(segments, blamed.__contains__)
            rest = _keep(segments, lambda d: d not in blamed)
            parts = [self._blame(sending, culprits, exc, busy_tries)]
            if rest:
                parts.append(self._send_rest(sending, rest, exc, named))
            return [entry for part in await asyncio.gather(*parts) for entry in part]
        halves = _halves(segments)
        if halves is None or sending.budget < 2:
            return await self._blame(sending, segments, exc, busy_tries)
        sending.budget -= 2
        log.info(
            "call of %d desktops (%d requests) for project %s rejected with %s %s naming none: sending the halves "
            "apart to isolate the culprit",
            len(desktop_ids),
            len(segments),
            sending.key.project_id,
            exc.http_status,
            exc.error_code,
            extra={"project_id": sending.key.project_id, "error_code": exc.error_code},
        )
        first, second = await asyncio.gather(
            self._send(sending, halves[0], None, busy_tries), self._send(sending, halves[1], None, busy_tries)
        )
        return first + second

    async def _send_rest(
        self, sending: _Sending, rest: Segments, exc: ApiError, named: Sequence[str]
    ) -> list[OutcomeEntry]:
        """Send again what remains of a call once the desktops its answer named are set aside."""
        if sending.budget < 1:
            # Not at fault (another desktop was named), only not sent again: publishing them again will work.
            innocent = error_entry(_flat(rest), exc).model_copy(update={"retryable": True})
            return [innocent]
        sending.budget -= 1
        log.info(
            "call for project %s rejected with %s %s naming %s: sending the other %d desktops again",
            sending.key.project_id,
            exc.http_status,
            exc.error_code,
            ", ".join(named),
            len(_flat(rest)),
            extra={"project_id": sending.key.project_id, "error_code": exc.error_code},
        )
        return await self._send(sending, rest, None)

    async def _blame(self, sending: _Sending, segments: Segments, exc: ApiError, busy_tries: int) -> list[OutcomeEntry]:
        """The outcome of desktops found at fault: the error, unless they are busy and there is time to try
        them again later."""
        desktop_ids = _flat(segments)
        if not is_busy(exc) or sending.busy_until is None:
            return [error_entry(desktop_ids, exc)]
        delay = min(self._busy_delay_s * 2**busy_tries, self._busy_max_delay_s)
        if self._clock() + delay >= sending.busy_until:
            return [error_entry(desktop_ids, exc)]  # still busy: reported, retryable
        log.info(
            "desktops %s of project %s busy (%s %s): trying again in %.1f s",
            ", ".join(desktop_ids[:5]) + (", ..." if len(desktop_ids) > 5 else ""),
            sending.key.project_id,
            exc.http_status,
            exc.error_code,
            delay,
            extra={"project_id": sending.key.project_id, "error_code": exc.error_code, "retry_in_s": delay},
        )
        await self._sleep(delay)
        return await self._send(sending, segments, None, busy_tries + 1)
