"""Urgent desktops: which pending desktops a person waits for, and how far they may jump the queue.

Teams publish bulk requests (tens of thousands of desktops) and urgent ones (a handful, someone waiting) on the
same queue. Served in arrival order, an urgent request would wait behind the whole backlog. So, in the
:class:`~snapworker.core.accumulator.Accumulator`:

* a key holding an urgent pending desktop may take a call at once: no linger, no hold, whatever the scarcity;
* it gets the next granted call, before starving and full keys; among urgent keys, the one urgent the longest
  goes first (a key goes to the back once its urgent desktops are cut);
* its call carries its urgent desktops first (in the order they became urgent), then is filled up to
  ``max_batch`` with the key's other pending desktops, oldest first, as any call is. Several urgent requests of a
  key merge into one call like any others; a desktop pending for a bulk request that an urgent request also
  names becomes urgent (it rides first).
* **the share**: while ready non-urgent keys are passed over, at most ``URGENT_RUN`` (3) granted calls in a row go
  to urgent keys; the next goes to the non-urgent keys (ranked as usual: starving, full round-robin, oldest). So
  however many urgent requests arrive, the backlog keeps at least 1 call in 4. Why 3 in 4 and not less: an urgent
  request is a handful of desktops, so an urgent call is mostly filled with its key's backlog and most of the
  urgent share is not lost to the backlog; a smaller share would make a person wait behind bulk calls for
  nothing. Why not all: a flood of urgent requests (a misbehaving producer) must not stop everyone else for good.

With nothing urgent pending, the accumulator's rules run unchanged: every urgency branch sits behind a test of
the empty :attr:`Urgency.by_key`.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
from itertools import islice

from snapworker.core.batch import MergeKey

__all__ = ["URGENT_RUN", "Urgency", "by_request"]

#: While ready non-urgent keys are passed over, at most this many granted calls in a row go to urgent keys.
URGENT_RUN = 3


class Urgency:
    """The urgent pending desktops of each key, and the run of calls they took from the backlog.

    The accumulator keeps it consistent with its pending desktops: only pending desktops are urgent.
    """

    __slots__ = ("by_key", "run")

    def __init__(self) -> None:
        #: key -> its urgent desktops, in the order they became urgent; keys in the order they became urgent.
        self.by_key: dict[MergeKey, dict[str, None]] = {}
        #: granted calls in a row that went to an urgent key while a ready non-urgent key was passed over; a call
        #: to a non-urgent key ends the run (the accumulator resets it when it chooses with nothing urgent)
        self.run = 0

    def urge(self, key: MergeKey, desktop_ids: Iterable[str], pending: Container[str]) -> bool:
        """Make those of ``desktop_ids`` that are in ``pending`` urgent; True if any is. A desktop already urgent
        keeps its place."""
        urged = [d for d in desktop_ids if d in pending]
        if not urged:
            return False
        self.by_key.setdefault(key, {}).update(dict.fromkeys(urged))
        return True

    def forget(self, key: MergeKey, desktop_ids: Iterable[str]) -> None:
        """These desktops are no longer pending (cut or discarded)."""
        urgent = self.by_key.get(key)
        if urgent is None:
            return
        for desktop_id in desktop_ids:
            urgent.pop(desktop_id, None)
        if not urgent:
            del self.by_key[key]

    def first(self, key: MergeKey, n: int) -> list[str]:
        """Up to ``n`` of ``key``'s urgent desktops, the longest urgent first."""
        return list(islice(self.by_key[key], n))

    def choose(self, candidates: list[MergeKey], by_rank: Callable[[list[MergeKey]], MergeKey]) -> MergeKey:
        """The key a granted call goes to: the key urgent the longest, unless the share gives the call to the
        other candidates (then ``by_rank`` chooses among them). Call it once per granted call: it counts the run."""
        urgent = self.by_key
        backlog = [key for key in candidates if key not in urgent]
        if len(backlog) == len(candidates):  # no urgent candidate (not expected: urgent keys are always sendable)
            return by_rank(candidates)
        if backlog:
            if self.run >= URGENT_RUN:
                self.run = 0
                return by_rank(backlog)
            self.run += 1
        among = set(candidates)
        return next(key for key in urgent if key in among)


def by_request(taken: Iterable[tuple[str, tuple[int, float]]]) -> tuple[tuple[str, ...], ...]:
    """Segments of a batch whose desktops are not in submission order: ``(desktop, (seq, arrived))`` grouped by
    request (``seq``), each request once, in the order of its first desktop in ``taken``."""
    runs: dict[int, list[str]] = {}
    for desktop_id, (seq, _) in taken:
        runs.setdefault(seq, []).append(desktop_id)
    return tuple(tuple(run) for run in runs.values())
