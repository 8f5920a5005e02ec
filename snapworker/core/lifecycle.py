"""The request lifecycle, sans I/O: which state each delivery is in, who owns it, and what settles an orphan.

Like the batching core, this takes data (and nothing reads a clock here) and returns data; the runtime does the
I/O it asks for. Every delivery the worker holds is in exactly one state::

    HELD ──► LOOKED_UP ──► BATCHED ──► IN_CALL ──► ANSWERED ──► SETTLED
      │          │  ▲          ▲  │         │          │            ▲
      │          └──┘          └──┼─────────┘          │            │
      └──────────┴─────────────────┴──────────┴─────────┴──► ORPHANED ┘   (sweep)
    any of them ──► RETURNED   (its broker session was lost: the broker has it back)

- ``HELD``: received from a live session, being read; ``LOOKED_UP``: with the idempotency gate (a store read, a
  lease wait, a reconciliation); ``BATCHED``: held by the batching core, waiting for a call; ``IN_CALL``: its
  batch's call is being made; ``ANSWERED``: its result is being published; ``SETTLED``: acked, dead-lettered
  or requeued, exactly once; ``RETURNED``: its session was lost; ``ORPHANED``: the owner it was given to ended
  (raised, was cancelled, or returned) without passing it on or settling it.
- Each state but the last three has an **owner**: whatever holds the delivery now (a task, the gate, the core).
  Ownership passes with each transition, never through a side table; :meth:`Lifecycle.release` tells the
  lifecycle an owner has ended, and what it still owned becomes an orphan.
- :meth:`Lifecycle.sweep` settles orphans in one place: a ``failed`` result with the reason (then
  dead-lettered), or a requeue when the cause is transient (a cancellation while the worker stops).

Transitions that are not allowed (a second settle, a move of a delivery already settled or returned) change
nothing and return False: the runtime then does no I/O for them. What is settled or returned is forgotten, so
the lifecycle holds only live deliveries (bounded by the prefetch window).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = ["Lifecycle", "Orphan", "State"]


class State(Enum):
    HELD = "held"
    LOOKED_UP = "looked up"
    BATCHED = "batched"
    IN_CALL = "in a call"
    ANSWERED = "answered"
    ORPHANED = "orphaned"


#: where each live state may go next (settling and returning are allowed from every live state)
_NEXT: dict[State, frozenset[State]] = {
    State.HELD: frozenset({State.LOOKED_UP, State.BATCHED, State.ANSWERED}),
    State.LOOKED_UP: frozenset({State.LOOKED_UP, State.BATCHED, State.ANSWERED}),
    State.BATCHED: frozenset({State.BATCHED, State.IN_CALL, State.ANSWERED}),
    State.IN_CALL: frozenset({State.IN_CALL, State.BATCHED, State.ANSWERED}),
    State.ANSWERED: frozenset(),
    State.ORPHANED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Orphan:
    """A delivery the sweep hands back to be settled: ``requeue`` (transient cause) or answered ``failed`` with
    ``reason`` and dead-lettered."""

    ticket: Hashable
    reason: str
    requeue: bool


@dataclass(slots=True)
class _Entry:
    session: Hashable
    state: State
    owner: Hashable
    reason: str = ""
    requeue: bool = False


class Lifecycle:
    """See the module docstring. Tickets (deliveries) and sessions are any hashable values."""

    def __init__(self) -> None:
        self._live: dict[Hashable, _Entry] = {}
        self._orphans: list[Hashable] = []

    # -- reading
    def state(self, ticket: Hashable) -> State | None:
        """The live state of ``ticket``; None once settled or returned (or never received)."""
        entry = self._live.get(ticket)
        return None if entry is None else entry.state

    def owner(self, ticket: Hashable) -> Hashable | None:
        entry = self._live.get(ticket)
        return None if entry is None else entry.owner

    def __len__(self) -> int:
        return len(self._live)

    # -- transitions
    def receive(self, ticket: Hashable, session: Hashable, owner: Hashable) -> None:
        """A delivery arrived on ``session``: HELD, owned by ``owner`` (what reads it)."""
        self._live[ticket] = _Entry(session, State.HELD, owner)

    def move(self, ticket: Hashable, state: State, owner: Hashable) -> bool:
        """Pass ``ticket`` on to ``owner`` in ``state``; False (nothing changed) if that is not a next state of
        its current one, or it is no longer live."""
        entry = self._live.get(ticket)
        if entry is None or state not in _NEXT[entry.state]:
            return False
        entry.state, entry.owner = state, owner
        return True

    def hand(self, ticket: Hashable, owner: Hashable) -> bool:
        """Give a live ``ticket`` to ``owner`` in the state it is in (a task spawned to carry it); False if it is
        no longer live, or orphaned."""
        entry = self._live.get(ticket)
        if entry is None or entry.state is State.ORPHANED:
            return False
        entry.owner = owner
        return True

    def settle(self, ticket: Hashable) -> bool:
        """``ticket`` is being acked, dead-lettered or requeued: True exactly once (then do it), False after."""
        return self._live.pop(ticket, None) is not None

    def session_lost(self, session: Hashable) -> list[Hashable]:
        """Every live delivery of ``session`` is RETURNED (the broker has it back): never settle them here."""
        gone = [ticket for ticket, entry in self._live.items() if entry.session == session]
        for ticket in gone:
            del self._live[ticket]
        return gone

    def release(self, owner: Hashable, tickets: Iterable[Hashable], reason: str, *, transient: bool) -> int:
        """``owner`` has ended: those of ``tickets`` it still owns become orphans (``reason``; ``transient``: to
        be requeued, not failed). How many did."""
        count = 0
        for ticket in tickets:
            entry = self._live.get(ticket)
            if entry is None or entry.owner != owner or entry.state is State.ORPHANED:
                continue
            entry.state, entry.owner, entry.reason, entry.requeue = State.ORPHANED, None, reason, transient
            self._orphans.append(ticket)
            count += 1
        return count

    def sweep(self) -> list[Orphan]:
        """The orphans to settle now, each once: the runtime requeues or fails them (and calls :meth:`settle`)."""
        found: list[Orphan] = []
        for ticket in self._orphans:
            entry = self._live.get(ticket)
            if entry is None or entry.state is not State.ORPHANED:
                continue  # settled or returned meanwhile
            found.append(Orphan(ticket, entry.reason, entry.requeue))
        self._orphans.clear()
        return found
