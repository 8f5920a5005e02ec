"""Pending desktops per merge key, cut into a batch only when a call is granted (late binding).

Kafka's producer works this way (RecordAccumulator + Sender): ``linger`` only makes a batch *ready*; a ready batch
keeps taking appends until the sender drains it. Here the sender is the rate limiter: every desktop that arrives
while a key waits for a call rides on that call, up to ``max_batch``. Cutting a batch the moment linger ended and
then waiting for a token (as snapworker once did) made each key queue a stream of small batches under a binding
rate limit, each spending a call.

Which key a granted call goes to, and when a key may take one (see :meth:`Accumulator.sendable_keys`):

* a key is **ready** when it holds ``max_batch`` desktops (*full*), or when its oldest desktop has waited
  ``linger_s``;
* when calls are not *scarce* (what is pending needs no more calls than the limiter grants at once,
  ``calls_at_once``: a lone request, a light load), every ready key may take a call: a batch goes at linger.
* while calls are scarce, a call is worth the most carried by a full batch, so a ready key that is not full
  waits while any key is full, and, when none is, while it is still filling fast: on the pace it has filled so
  far it will be full before its oldest desktop has waited ``hold_s`` (a batch of ``n`` desktops that stops
  growing is held at most ``hold_s * n / max_batch`` after its oldest desktop arrived). Fairness bounds the
  wait: a batch whose oldest desktop has waited ``starve_s`` takes the next call, full batches or not.
* the granted key is chosen: starving batches first (oldest first), then full ones **round-robin over
  projects** (the project served longest ago first), then the rest, oldest first. A big project with many full
  batches therefore shares calls with other projects' full batches, and cannot hold a small project's batch
  back for longer than ``starve_s``.

**Urgent desktops** (a person waits for them) take a call at once and ahead of the rest, within a share that
keeps the backlog moving: see :mod:`snapworker.core.urgency`.

Time is only ever passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import groupby, islice

from snapworker.core.batch import Batch, FlushReason, MergeKey
from snapworker.core.urgency import Urgency, by_request

__all__ = ["Accumulator"]


@dataclass(slots=True)
class _Pending:
    # desktop id -> (sequence number of the submission that brought it, when it arrived). A dict keeps arrival
    # order and drops in O(1); the sequence numbers give the request boundaries when a batch is cut.
    desktops: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def opened_at(self) -> float:
        """When the oldest pending desktop arrived (the batch's linger counts from here)."""
        return next(iter(self.desktops.values()))[1]


class Accumulator:
    """Holds every merge key's pending desktops until :meth:`cut` takes a batch of them. See the module docstring.

    The caller makes sure a desktop is not added twice to a key while it is pending (see BatchingCore).
    """

    def __init__(
        self,
        max_batch: int,
        linger_s: float,
        *,
        hold_s: float = 0.0,
        starve_s: float = math.inf,
        calls_at_once: float = math.inf,
    ):
        if not max_batch >= 1:
            raise ValueError("max_batch must be at least 1")
        if linger_s < 0 or hold_s < 0:
            raise ValueError("linger_s and hold_s must not be negative")
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.hold_s = max(hold_s, linger_s)
        self.starve_s = max(starve_s, self.hold_s)
        self.calls_at_once = calls_at_once
        self._pending: dict[MergeKey, _Pending] = {}
        self._full: set[MergeKey] = set()
        # project -> grant number of its last batch; the smallest goes first (round-robin over projects)
        self._served: dict[str, int] = {}
        self._grants = 0
        self._last_id = 0
        self._buffered = 0
        self._urgency = Urgency()
        # the keys with urgent desktops (the same dict): empty unless urgent work is pending, so testing it is all
        # the common path pays for urgency
        self._urgent = self._urgency.by_key

    # -- what the runtime reads
    @property
    def buffered(self) -> int:
        """Desktops pending (not yet cut into a batch)."""
        return self._buffered

    @property
    def keys(self) -> int:
        """Merge keys with pending desktops."""
        return len(self._pending)

    @property
    def has_full(self) -> bool:
        return bool(self._full)

    @property
    def has_urgent(self) -> bool:
        """Whether an urgent desktop is pending (then a granted call has a key to go to)."""
        return bool(self._urgent)

    def is_urgent(self, key: MergeKey) -> bool:
        return key in self._urgent

    def pending_count(self, key: MergeKey) -> int:
        pending = self._pending.get(key)
        return 0 if pending is None else len(pending.desktops)

    # -- appends
    def add(self, key: MergeKey, desktop_ids: list[str], now: float, seq: int) -> bool:
        """Add desktops (new to this key) under submission ``seq``; True if this opened the key or filled it."""
        if not desktop_ids:
            return False
        pending = self._pending.get(key)
        opened = pending is None
        if pending is None:
            pending = self._pending[key] = _Pending()
        before = len(pending.desktops)
        for desktop_id in desktop_ids:
            pending.desktops[desktop_id] = (seq, now)
        self._buffered += len(pending.desktops) - before
        filled = before < self.max_batch <= len(pending.desktops)
        if filled:
            self._full.add(key)
        return opened or filled

    def urge(self, key: MergeKey, desktop_ids: Iterable[str]) -> bool:
        """Make those of ``desktop_ids`` pending under ``key`` urgent (the others are cut already: their call is
        made or under way); True if any is. A desktop already urgent keeps its place."""
        pending = self._pending.get(key)
        return pending is not None and self._urgency.urge(key, desktop_ids, pending.desktops)

    def calm(self, key: MergeKey, desktop_ids: Iterable[str]) -> None:
        """These desktops of ``key`` are no longer urgent (no urgent request waits for them any more)."""
        if self._urgent:
            self._urgency.forget(key, desktop_ids)

    def discard(self, key: MergeKey, desktop_id: str) -> bool:
        """Take a pending desktop out; False if it is not pending (already cut)."""
        pending = self._pending.get(key)
        if pending is None or pending.desktops.pop(desktop_id, None) is None:
            return False
        self._buffered -= 1
        if self._urgent:
            self._urgency.forget(key, (desktop_id,))
        if len(pending.desktops) < self.max_batch:
            self._full.discard(key)
        if not pending.desktops:
            del self._pending[key]
        return True

    # -- readiness
    def scarce(self) -> bool:
        """Whether the pending desktops need more calls than the limiter grants at once."""
        if self.calls_at_once == math.inf:
            return False
        needed = 0
        for pending in self._pending.values():
            needed += -(-len(pending.desktops) // self.max_batch)
            if needed > self.calls_at_once:
                return True
        return False

    def _state(self, pending: _Pending, now: float, scarce: bool) -> float:
        """0.0 if the key may take a call at ``now``, else the time at which that may change without events."""
        n = len(pending.desktops)
        if n >= self.max_batch:
            return 0.0
        opened = pending.opened_at
        ready_at = opened + self.linger_s
        if now < ready_at:
            return ready_at
        if not scarce:
            return 0.0
        if self._full:  # a full batch takes the call, unless this one starves
            starves_at = opened + self.starve_s
            return starves_at if now < starves_at else 0.0
        # Held while on pace to fill by opened + hold_s: n / age * hold_s >= max_batch.
        held_until = opened + self.hold_s * n / self.max_batch
        return held_until if now < held_until else 0.0

    def sendable_keys(self, now: float, *, everything: bool = False) -> list[MergeKey]:
        """The keys a granted call may go to at ``now`` (all of them with ``everything``: shutdown, pressure)."""
        if everything:
            return list(self._pending)
        scarce = self.scarce()
        if self._urgent:
            urgent = self._urgent
            return [k for k, p in self._pending.items() if k in urgent or self._state(p, now, scarce) == 0.0]
        return [key for key, pending in self._pending.items() if self._state(pending, now, scarce) == 0.0]

    def next_change(self, now: float) -> float | None:
        """The earliest time after ``now`` at which a key not sendable now becomes so (None: no such time)."""
        scarce = self.scarce()
        pending: Iterable[_Pending] = self._pending.values()
        if self._urgent:  # urgent keys are sendable now
            pending = [p for k, p in self._pending.items() if k not in self._urgent]
        times = [t for p in pending if (t := self._state(p, now, scarce)) > 0.0]
        return min(times, default=None)

    def fullest(self) -> MergeKey | None:
        if not self._pending:
            return None
        return max(self._pending, key=lambda k: len(self._pending[k].desktops))

    # -- cutting
    def choose(self, candidates: list[MergeKey], now: float) -> MergeKey | None:
        """The key a granted call goes to: urgent ones (within the share), then starving ones, then full ones
        round-robin over projects, then the oldest. Call it once per granted call: it counts the urgent run."""
        if not candidates:
            return None
        if self._urgent:
            return self._urgency.choose(candidates, lambda keys: self._choose(keys, now))
        if self._urgency.run:
            self._urgency.run = 0  # this call goes to the backlog: the urgent run is over
        return self._choose(candidates, now)

    def _choose(self, candidates: list[MergeKey], now: float) -> MergeKey:
        starving_before = now - self.starve_s

        def rank(key: MergeKey) -> tuple[int, int, float]:
            opened = self._pending[key].opened_at
            if opened <= starving_before:
                return (0, 0, opened)
            if key in self._full:
                return (1, self._served.get(key.project_id, 0), opened)
            return (2, 0, opened)

        return min(candidates, key=rank)

    def cut(self, key: MergeKey, reason: FlushReason) -> Batch:
        """Take up to ``max_batch`` of ``key``'s oldest pending desktops as a batch to send now (its urgent ones
        first, see :meth:`_cut_urgent`)."""
        if self._urgent and key in self._urgent:
            return self._cut_urgent(key, reason)
        pending = self._pending[key]
        opened_at = pending.opened_at
        taken = list(islice(pending.desktops.items(), self.max_batch))
        if len(taken) == len(pending.desktops):
            del self._pending[key]
        else:
            # rebuilding keeps the rest in arrival order without leaving the dict's head full of deleted slots
            pending.desktops = dict(islice(pending.desktops.items(), self.max_batch, None))
        if len(pending.desktops) < self.max_batch or key not in self._pending:
            self._full.discard(key)
        self._granted(key, len(taken))
        segments = tuple(tuple(d for d, _ in run) for _, run in groupby(taken, key=lambda item: item[1][0]))
        return Batch(
            id=self._last_id,
            key=key,
            desktop_ids=tuple(d for d, _ in taken),
            segments=segments,
            opened_at=opened_at,
            reason=reason,
        )

    def _cut_urgent(self, key: MergeKey, reason: FlushReason) -> Batch:
        """Take ``key``'s urgent desktops (up to ``max_batch``), then fill up with its oldest other ones.

        ``desktop_ids`` are grouped by request, each request's segment once, in the order of its first desktop
        taken: the requests that brought urgent desktops come first (a promoted desktop stays in the segment of the
        request that brought it), and the segments still split ``desktop_ids`` along request boundaries.
        """
        pending = self._pending[key]
        desktops = pending.desktops
        urgent = self._urgency.first(key, self.max_batch)
        taken = [(d, desktops.pop(d)) for d in urgent]
        self._urgency.forget(key, urgent)
        room = self.max_batch - len(taken)
        taken += islice(desktops.items(), room)  # oldest first; no urgent one left if there is room
        # rebuilt, as in cut(): keeps the rest in arrival order without deleted slots at the dict's head
        pending.desktops = dict(islice(desktops.items(), room, None))
        if not pending.desktops:
            del self._pending[key]
        if len(pending.desktops) < self.max_batch:
            self._full.discard(key)
        self._granted(key, len(taken))
        segments = by_request(taken)
        return Batch(
            id=self._last_id,
            key=key,
            desktop_ids=tuple(d for run in segments for d in run),
            segments=segments,
            opened_at=min(at for _, (_, at) in taken),
            reason=reason,
        )

    def _granted(self, key: MergeKey, taken: int) -> None:
        """Account for a batch of ``taken`` desktops cut from ``key`` (its call's grant; the batch id)."""
        self._buffered -= taken
        self._grants += 1
        self._served[key.project_id] = self._grants
        if len(self._served) > 4 * len(self._pending) + 256:
            # only projects with pending work take part in the round; forget the others
            active = {k.project_id for k in self._pending}
            self._served = {p: n for p, n in self._served.items() if p in active}
        self._last_id += 1
