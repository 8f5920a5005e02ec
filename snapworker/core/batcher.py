"""Open batches: fill them per merge key and close them when full, lingered, or asked to."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby

from snapworker.core.batch import Batch, FlushReason, MergeKey

__all__ = ["Batcher"]


@dataclass(slots=True)
class _OpenBatch:
    id: int
    opened_at: float
    # desktop id -> sequence number of the submission that brought it; a dict keeps insertion order,
    # drops in O(1), and the sequence numbers give the request boundaries when the batch closes.
    desktops: dict[str, int] = field(default_factory=dict)


class Batcher:
    """Keeps at most one open batch per merge key.

    Time is only ever passed in. A batch's deadline is the time its first desktop arrived plus ``linger_s``;
    since the linger is the same for every batch, opening order is deadline order, and a plain dict (which
    keeps insertion order) serves as the deadline queue: the first open batch is always the next one due.
    The caller makes sure a desktop is not added twice while pending (see BatchingCore).
    """

    def __init__(self, max_batch: int, linger_s: float) -> None:
        if not max_batch >= 1:
            raise ValueError("max_batch must be at least 1")
        if linger_s < 0:
            raise ValueError("linger_s must not be negative")
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._open: dict[MergeKey, _OpenBatch] = {}
        self._last_id = 0
        self._buffered = 0

    @property
    def buffered(self) -> int:
        """Desktops waiting in open batches."""
        return self._buffered

    def add(self, key: MergeKey, desktop_ids: list[str], now: float, seq: int) -> list[Batch]:
        """Add desktops (new to this key) under submission ``seq``; return the batches this filled."""
        full: list[Batch] = []
        batch = self._open.get(key)
        for desktop_id in desktop_ids:
            if batch is None:
                self._last_id += 1
                batch = self._open[key] = _OpenBatch(self._last_id, now)
            batch.desktops[desktop_id] = seq
            if len(batch.desktops) >= self.max_batch:
                full.append(self._close(key, "full"))
                batch = None
        self._buffered += len(desktop_ids)
        return full

    def discard(self, key: MergeKey, desktop_id: str) -> bool:
        """Take a desktop out of its open batch; False if it is not in one (already sent)."""
        batch = self._open.get(key)
        if batch is None or batch.desktops.pop(desktop_id, None) is None:
            return False
        self._buffered -= 1
        if not batch.desktops:
            del self._open[key]
        return True

    def next_deadline(self) -> float | None:
        """When the oldest open batch must be sent, or None when nothing is open."""
        for batch in self._open.values():
            return batch.opened_at + self.linger_s
        return None

    def due(self, now: float) -> list[Batch]:
        """Close every batch whose deadline is at or before ``now``."""
        closed: list[Batch] = []
        while self._open:
            key, batch = next(iter(self._open.items()))
            if batch.opened_at + self.linger_s > now:
                break
            closed.append(self._close(key, "linger"))
        return closed

    def flush_largest(self) -> list[Batch]:
        """Close the open batch with the most desktops (none if nothing is open)."""
        if not self._open:
            return []
        key = max(self._open, key=lambda k: len(self._open[k].desktops))
        return [self._close(key, "pressure")]

    def flush_all(self) -> list[Batch]:
        """Close every open batch now (shutdown)."""
        return [self._close(key, "shutdown") for key in list(self._open)]

    def _close(self, key: MergeKey, reason: FlushReason) -> Batch:
        batch = self._open.pop(key)
        self._buffered -= len(batch.desktops)
        segments = tuple(
            tuple(desktop for desktop, _ in run) for _, run in groupby(batch.desktops.items(), key=lambda item: item[1])
        )
        return Batch(
            id=batch.id,
            key=key,
            desktop_ids=tuple(batch.desktops),
            segments=segments,
            opened_at=batch.opened_at,
            reason=reason,
        )
