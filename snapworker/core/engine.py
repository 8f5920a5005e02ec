"""BatchingCore: the sans-I/O heart of snapworker. Requests and ``now`` in; batches and results out.

It never reads a clock, sleeps, or touches a network. The runtime feeds it and does what it says::

    batches = core.submit(ticket, request, now)      # send these batches
    batches = core.due(now)                          # at core.next_deadline(): send these
    results = core.complete(batch.id, outcome, now)  # publish these results, then ack their messages
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from snapworker.core.batch import Batch, MergeKey, Outcome, OutcomeEntry
from snapworker.core.batcher import Batcher
from snapworker.core.ledger import Ledger, RequestMeta
from snapworker.models import ResultError, SnapshotRequest, SnapshotResult

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

    def __init__(self, max_batch: int, linger_s: float) -> None:
        self._batcher = Batcher(max_batch, linger_s)
        self._ledger = Ledger()
        # (key, desktop) -> tickets waiting for its outcome: the set of pending desktops.
        self._waiters: dict[tuple[MergeKey, str], list[Ticket]] = {}
        self._keys: dict[Ticket, MergeKey] = {}
        self._in_flight: dict[int, Batch] = {}
        self._seq = 0

    # -- what the runtime reads
    @property
    def open_requests(self) -> int:
        return len(self._ledger)

    @property
    def buffered_desktops(self) -> int:
        """Desktops waiting in open batches (not yet handed out)."""
        return self._batcher.buffered

    @property
    def batches_in_flight(self) -> int:
        return len(self._in_flight)

    def next_deadline(self) -> float | None:
        """When ``due`` will next return a batch; None when nothing waits. Sleep until then."""
        return self._batcher.next_deadline()

    # -- events
    def submit(
        self,
        ticket: Ticket,
        request: SnapshotRequest,
        request_id: str,
        correlation_id: str | None,
        now: float,
    ) -> list[Batch]:
        """Take a valid request; return the batches it filled (send them now)."""
        key = MergeKey.of(request)
        self._ledger.open(ticket, RequestMeta(request_id, correlation_id, request.project_id), request.desktop_ids)
        self._keys[ticket] = key
        new: list[str] = []
        for desktop_id in request.desktop_ids:
            waiting = self._waiters.get((key, desktop_id))
            if waiting is None:
                self._waiters[(key, desktop_id)] = [ticket]
                new.append(desktop_id)
            else:
                waiting.append(ticket)
        self._seq += 1
        return self._hand_out(self._batcher.add(key, new, now, self._seq))

    def due(self, now: float) -> list[Batch]:
        """The batches whose linger has run out at ``now``."""
        return self._hand_out(self._batcher.due(now))

    def flush_largest(self) -> list[Batch]:
        """The fullest open batch, at once: call when no more requests can arrive (the prefetch window is full)."""
        return self._hand_out(self._batcher.flush_largest())

    def flush_all(self) -> list[Batch]:
        """Every open batch, at once (shutdown)."""
        return self._hand_out(self._batcher.flush_all())

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
                    finished.append(Finished(ticket, result))
        return finished

    def drop(self, tickets: Iterable[Ticket]) -> None:
        """Forget requests whose messages the broker will redeliver (their channel closed).

        Their desktops leave the open batches unless another request still waits for them; desktops already
        sent stay in flight, and their outcome goes to whoever still waits.
        """
        for ticket in tickets:
            if ticket not in self._ledger:
                continue
            key = self._keys.pop(ticket)
            for desktop_id in self._ledger.unsettled(ticket):
                waiting = self._waiters[(key, desktop_id)]
                waiting.remove(ticket)
                if not waiting and self._batcher.discard(key, desktop_id):
                    del self._waiters[(key, desktop_id)]
            self._ledger.forget(ticket)

    def _hand_out(self, batches: list[Batch]) -> list[Batch]:
        for batch in batches:
            self._in_flight[batch.id] = batch
        return batches
