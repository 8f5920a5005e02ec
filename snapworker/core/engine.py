"""BatchingCore: the sans-I/O heart of snapworker. Requests and ``now`` in; batches and results out.

It never reads a clock, sleeps, or touches a network. The runtime feeds it and does what it says::

    wake = core.submit(ticket, request, request_id, correlation_id, now)   # hold the request
    if core.sendable(now): grant = await limiter.acquire()   # else sleep until core.next_deadline(now)
    batch = core.take(now)                                   # cut the batch the grant goes to; send it
    results = core.complete(batch.id, outcome, now)          # publish these results, then ack their messages

Batches are cut only when a call is granted (late binding, see :mod:`snapworker.core.accumulator`), so every
desktop that arrives while a key waits for a call rides on it.

An **urgent** request (``submit(..., urgent=True)``: a person waits for it) makes its pending desktops urgent,
including those an earlier request brought: its key may take a call at once and gets the next granted call, which
carries the urgent desktops first and is filled up with the key's backlog. Urgent calls never take more than 3 in
a row while other keys are ready (the share: see the accumulator).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from snapworker.contract.models import ResultError, SnapshotRequest, SnapshotResult
from snapworker.core.accumulator import Accumulator
from snapworker.core.batch import Batch, FlushReason, MergeKey, Outcome, OutcomeEntry
from snapworker.core.ledger import Ledger, RequestMeta

__all__ = ["BatchingCore", "Finished", "RequestMeta"]

Ticket = Hashable


@dataclass(frozen=True, slots=True)
class Finished:
    """A request whose every desktop has an outcome: publish ``result``, then ack the message of ``ticket``."""

    ticket: Ticket
    result: SnapshotResult


_NO_OUTCOME = "SNAPWORKER.NO_OUTCOME"


class BatchingCore:
    """Merges requests into batches and turns batch outcomes back into one result per request.

    A desktop is *pending* from the moment a request asks for it until its batch has an outcome. While it is
    pending under a merge key, further requests for it under the same key wait for the same outcome instead
    of sending it again. ``ticket`` is the runtime's handle for a request (its delivery); it must be unique
    among open requests.
    """

    def __init__(
        self,
        max_batch: int,
        linger_s: float,
        *,
        hold_s: float = 0.0,
        starve_s: float = math.inf,
        calls_at_once: float = math.inf,
        window: int | None = None,
    ) -> None:
        self._acc = Accumulator(max_batch, linger_s, hold_s=hold_s, starve_s=starve_s, calls_at_once=calls_at_once)
        self._ledger = Ledger()
        # (key, desktop) -> tickets waiting for its outcome: the set of pending desktops.
        self._waiters: dict[tuple[MergeKey, str], list[Ticket]] = {}
        self._keys: dict[Ticket, MergeKey] = {}
        self._in_flight: dict[int, Batch] = {}
        self._seq = 0
        self._closing = False
        # open urgent requests (empty in the normal case: tested before any work on it)
        self._urgent: set[Ticket] = set()
        #: The prefetch window in force (requests the broker lets this worker hold); None: unbounded.
        self.window = window
        #: Distinct desktops per request, a moving average (sizes the window: see WindowPolicy).
        self.desktops_per_request = 1.0

    # -- what the runtime reads
    @property
    def open_requests(self) -> int:
        return len(self._ledger)

    @property
    def buffered_desktops(self) -> int:
        """Desktops pending, not yet cut into a batch."""
        return self._acc.buffered

    @property
    def batches_in_flight(self) -> int:
        """Batches cut for a granted call and not yet completed."""
        return len(self._in_flight)

    def pending_desktops(self, key: MergeKey) -> int:
        """Desktops of ``key`` pending (not yet cut)."""
        return self._acc.pending_count(key)

    @property
    def urgent_waiting(self) -> int:
        """Urgent requests open: submitted, not yet answered (nor dropped)."""
        return len(self._urgent)

    @property
    def active_keys(self) -> int:
        """Merge keys with desktops pending or in flight."""
        # O(batches in flight): the runtime asks often
        return self._acc.keys + sum(
            1 for k in {b.key for b in self._in_flight.values()} if not self._acc.pending_count(k)
        )

    def _pressure(self) -> bool:
        # The window is full and nothing is in flight: nothing more can arrive until something is answered, so
        # waiting for linger (or for a batch to fill) would only stall. With calls in flight, their answers free
        # the window; sending early then would only cost calls.
        return self.window is not None and self.open_requests >= self.window and not self._in_flight

    def sendable(self, now: float) -> bool:
        """Whether a call granted now would carry a batch: acquire a call when True."""
        if self._acc.buffered == 0:
            return False
        if self._closing or self._acc.has_full or self._acc.has_urgent or self._pressure():
            return True
        return bool(self._acc.sendable_keys(now))

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`sendable` may next turn True with no further events; None: only an event can. Sleep
        until then (or until a submit, complete or drop asks to wake)."""
        return None if self._closing else self._acc.next_change(now)

    def waiting(self, batch: Batch) -> dict[Ticket, tuple[str, ...]]:
        """The open requests that wait for ``batch``'s outcome, each with the desktops of the batch it waits on
        (read-only: the runtime records them before and after the call)."""
        found: dict[Ticket, list[str]] = {}
        for desktop_id in batch.desktop_ids:
            for ticket in self._waiters.get((batch.key, desktop_id), ()):
                found.setdefault(ticket, []).append(desktop_id)
        return {ticket: tuple(desktops) for ticket, desktops in found.items()}

    # -- events
    def submit(
        self,
        ticket: Ticket,
        request: SnapshotRequest,
        request_id: str,
        correlation_id: str | None,
        now: float,
        *,
        urgent: bool = False,
    ) -> bool:
        """Take a valid request. True when the sender should look again (a key opened or filled, or turned urgent).

        ``urgent``: a person waits for it; its desktops still pending go first (see the module docstring). Those
        already in a call are not sent again: their answer comes with that call's."""
        key = MergeKey.of(request)
        self._ledger.open(ticket, RequestMeta(request_id, correlation_id, request.project_id), request.desktop_ids)
        self._keys[ticket] = key
        self.desktops_per_request += (len(request.desktop_ids) - self.desktops_per_request) / 100
        new: list[str] = []
        for desktop_id in request.desktop_ids:
            waiting = self._waiters.get((key, desktop_id))
            if waiting is None:
                self._waiters[(key, desktop_id)] = [ticket]
                new.append(desktop_id)
            else:
                waiting.append(ticket)
        self._seq += 1
        wake = self._acc.add(key, new, now, self._seq)
        if urgent:
            self._urgent.add(ticket)
            wake = self._acc.urge(key, request.desktop_ids) or wake
        return wake or (self.window is not None and self.open_requests >= self.window)

    def take(self, now: float) -> Batch | None:
        """A call was granted at ``now``: cut the batch it carries (None if nothing is pending any more)."""
        reason: FlushReason = "linger"
        if self._closing:
            candidates, reason = self._acc.sendable_keys(now, everything=True), "shutdown"
        else:
            candidates = self._acc.sendable_keys(now)
            if not candidates and self._pressure():
                fullest = self._acc.fullest()
                candidates, reason = ([fullest] if fullest is not None else []), "pressure"
        key = self._acc.choose(candidates, now)
        if key is None:
            return None
        if self._acc.has_urgent and self._acc.is_urgent(key):
            reason = "urgent"
        elif self._acc.pending_count(key) >= self._acc.max_batch:
            reason = "full"
        batch = self._acc.cut(key, reason)
        self._in_flight[batch.id] = batch
        return batch

    def close(self) -> None:
        """Shutdown: from now on every pending desktop may go at once, full or not."""
        self._closing = True

    def complete(self, batch_id: int, outcome: Outcome, now: datetime | float) -> list[Finished]:
        """Record a batch's outcome; return the requests it finished, each exactly once.

        ``outcome`` should cover the batch's desktops exactly once; a desktop it leaves out fails with
        ``SNAPWORKER.NO_OUTCOME`` rather than waiting forever. ``now`` is a datetime or a POSIX timestamp.
        """
        batch = self._in_flight.pop(batch_id)
        when = now if isinstance(now, datetime) else datetime.fromtimestamp(now, UTC)
        by_desktop: dict[str, OutcomeEntry] = {}
        for entry in outcome:
            for desktop_id in entry.desktop_ids:
                by_desktop.setdefault(desktop_id, entry)
        missing = [d for d in batch.desktop_ids if d not in by_desktop]
        if missing:
            gap = ResultError(
                desktop_ids=tuple(missing),
                http_status=None,
                error_code=_NO_OUTCOME,
                error_msg="the batch ended without an outcome for these desktops",
                retryable=True,
            )
            by_desktop.update(dict.fromkeys(missing, gap))
        finished: list[Finished] = []
        for desktop_id in batch.desktop_ids:
            entry = by_desktop[desktop_id]
            for ticket in self._waiters.pop((batch.key, desktop_id), ()):
                result = self._ledger.settle(ticket, desktop_id, entry, when)
                if result is not None:
                    del self._keys[ticket]
                    if self._urgent:
                        self._urgent.discard(ticket)
                    finished.append(Finished(ticket, result))
        return finished

    def drop(self, tickets: Iterable[Ticket]) -> None:
        """Forget requests whose messages the broker will redeliver (their channel closed).

        Their desktops leave the open batches unless another request still waits for them; desktops already
        sent stay in flight, and their outcome goes to whoever still waits. A dropped urgent request's desktops stay
        urgent only while another urgent request waits for them.
        """
        for ticket in tickets:
            if ticket not in self._ledger:
                continue
            key = self._keys.pop(ticket)
            urgent = ticket in self._urgent
            self._urgent.discard(ticket)
            calmed: list[str] = []
            for desktop_id in self._ledger.unsettled(ticket):
                waiting = self._waiters[(key, desktop_id)]
                waiting.remove(ticket)
                if not waiting and self._acc.discard(key, desktop_id):
                    del self._waiters[(key, desktop_id)]
                elif urgent and not any(t in self._urgent for t in waiting):
                    calmed.append(desktop_id)  # only bulk requests wait for it now
            if calmed:
                self._acc.calm(key, calmed)
            self._ledger.forget(ticket)
