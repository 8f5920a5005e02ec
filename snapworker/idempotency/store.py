"""The idempotency store's contract, and the records it keeps, independent of any backend.

Every request that carries a key (its ``request_id``, else its AMQP ``message_id``) gets rows in the store:

- an **intent** row before each batch-create call that carries some of its desktops: which desktops, under
  which attempt id, at what time (POSIX seconds);
- an **outcome** row after that call: what became of those desktops (a job or an error per desktop group).

Rows are only ever added (never updated in place), so a backend needs no read-modify-write and one write per
call covers every request of the batch. Rows carry the request's **fingerprint** (its merge key and desktop
set): a request_id reused for a different request does not see the other's rows.

Rows are **ordered by the store**, never by a clock: a backend gives each row a place in a sequence of its own
as it records it (``Row.seq``), and :func:`state_of` folds a key's rows in that order. Hosts' clocks disagree;
ordered by ``Row.at``, a retryable error recorded before a job would sort after it on a host whose clock runs
ahead, and its desktop be sent again. ``Row.at`` only times reconciliation. What the rows hold is encoded and
decoded by :mod:`.records` (versioned apart from the wire contract); a row a backend cannot read back comes out
of ``lookup`` as an :data:`UNREADABLE` row of its key, and a row :func:`state_of` cannot read makes its request
doubtful (``RequestState.unreadable``), never an error.

Backends (:mod:`.sqlite_store`, :mod:`.redis_store`) implement :class:`IdempotencyStore` and raise only
:class:`~snapworker.errors.StoreUnavailable`: third-party errors are translated at their boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Literal, NamedTuple, Protocol

from snapworker.contract.models import JobEntry, ResultError, SnapshotRequest
from snapworker.core import OutcomeEntry
from snapworker.idempotency.records import Unreadable, decode_desktops, decode_entry, decode_groups, encode_entry

__all__ = [
    "INTENT",
    "OUTCOME",
    "UNREADABLE",
    "IdempotencyStore",
    "RequestState",
    "Row",
    "entry_body",
    "fingerprint",
    "holds",
    "json_strings",
    "state_of",
]

INTENT: Literal[0] = 0
OUTCOME: Literal[1] = 1
#: The kind of a row a backend found and could not read back (its framing damaged, or of a newer layout): only its
#: key (and its seq) are known. Never written.
UNREADABLE: Literal[-1] = -1


class Row(NamedTuple):
    """One record row. ``body``: the intent's desktop IDs, or the outcome's entries, as JSON text (:mod:`.records`).
    ``at``: when it was made (POSIX seconds, the writer's clock): it times reconciliation, and never orders rows.
    ``seq``: the row's place in the store's own sequence, set by ``lookup`` (0 in rows to be written); rows
    recorded in one write may share one. (A tuple, not a dataclass: thousands are made a second, and a store can
    bind one as it is.)"""

    key: str
    fingerprint: str
    kind: int  # INTENT or OUTCOME; UNREADABLE, or one this version does not know, only in rows found
    attempt: str
    body: str
    at: float
    seq: int = 0


class IdempotencyStore(Protocol):
    """Where rows live. Every method raises StoreUnavailable (and nothing else) when the store cannot answer."""

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        """The unexpired rows of each key that has any, in the order the store recorded them (``seq`` rising;
        never by ``at``). A row the store finds and cannot read back is an UNREADABLE row of its key: it never
        fails the lookup of other keys."""
        ...

    async def record_intent(self, rows: Sequence[Row]) -> None:
        """Durably add intent rows (one write for all of them) before the call they announce."""
        ...

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        """Durably add outcome rows (one write for all of them) after the call they settle. Each has an intent
        row of the same key and attempt, recorded before or among ``rows`` (a backend may find outcomes
        through their intents); ``rows`` may hold such intent rows too, and they are recorded before the
        outcomes of their attempt wherever they stand in ``rows``."""
        ...

    async def close(self) -> None: ...


def fingerprint(request: SnapshotRequest) -> str:
    """What makes two requests with one request_id the same request: merge key (see ``MergeKey.of``) and
    desktop set."""
    system, data = request.system_disk_snapshot, request.data_disk_snapshot
    parts = [
        request.project_id,
        request.disk_type or "",
        system.model_dump_json() if system else "",
        data.model_dump_json() if data else "",
        *sorted(request.desktop_ids),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def json_strings(values: Iterable[str]) -> str:
    """A JSON array of strings, as ``json.dumps`` reads it back; built in C per string (``json.dumps`` makes an
    encoder per call, which costs more than the encoding of a short list)."""
    return "[" + ",".join(map(encode_basestring_ascii, values)) + "]"


def entry_body(entry: OutcomeEntry) -> str:
    """An outcome entry as stored, without its desktop IDs (those are stored per request beside it)."""
    return encode_entry(entry)


def holds(entry: OutcomeEntry) -> bool:
    """Whether a recorded entry answers the desktop for good: a job, or an error publishing again cannot fix."""
    return isinstance(entry, JobEntry) or not entry.retryable


@dataclass(slots=True)
class RequestState:
    """What the store knows of one request, per desktop: its recorded outcome (the latest), and the attempts that
    may have made a snapshot of it, with the time each was announced (POSIX seconds). A desktop announced later
    than its outcome has no outcome: it was being sent again, and that call may or may not have created a
    snapshot. An attempt stays doubtful until an outcome rules it out: an entry that holds (then the desktop is
    answered), or a retryable error that created nothing; a ``maybe_created`` error, or an entry this version
    cannot read, keeps it doubtful.

    ``unreadable``: some row of the request could not be read (a newer version's, or damaged) and may have
    announced any of its desktops under an attempt whose marker and time are unknown. Then **every desktop of
    the request without an outcome that holds is doubtful, with no known attempt** (whether or not it is in
    ``attempts``): the caller reconciles those desktops (their snapshots listed without a marker) and never
    sends them blindly. Outcomes that hold still answer their desktops: a job, or an error that sending again
    cannot fix, is true whatever came after it."""

    outcomes: dict[str, OutcomeEntry] = field(default_factory=dict)
    attempts: dict[str, dict[str, float]] = field(default_factory=dict)
    unreadable: bool = False
    #: attempt -> when its intent was last written (renewals included): its lease runs from there
    renewed: dict[str, float] = field(default_factory=dict)

    def leased_from(self) -> float | None:
        """When the latest doubtful attempt last renewed its intent (None: no attempt is doubtful). Its call may
        run until a lease after that (see ``snapworker.idempotency.journal.lease_s``)."""
        doubtful = {attempt for announced in self.attempts.values() for attempt in announced}
        return max((self.renewed[a] for a in doubtful if a in self.renewed), default=None)


def state_of(rows: Sequence[Row], fingerprint_: str) -> RequestState:
    """Fold a key's rows (those of this fingerprint, and UNREADABLE ones: whose they are is unknown) into its
    state, in the order given: the store's (see ``IdempotencyStore.lookup``). Never raises for what the rows
    hold: what it cannot read sets ``unreadable`` or keeps an attempt doubtful (see :class:`RequestState`)."""
    state = RequestState()
    for row in rows:
        if row.fingerprint != fingerprint_ and row.kind != UNREADABLE:
            continue
        try:
            if row.kind == INTENT:
                if type(row.attempt) is not str:
                    raise Unreadable("an intent without an attempt id")
                for desktop_id in decode_desktops(row.body):
                    # the first intent of an attempt dates it (snapshots made since); renewals extend its lease
                    state.attempts.setdefault(desktop_id, {}).setdefault(row.attempt, row.at)
                    state.outcomes.pop(desktop_id, None)
                state.renewed[row.attempt] = max(row.at, state.renewed.get(row.attempt, row.at))
            elif row.kind == OUTCOME:
                _fold_outcome(state, row)
            else:
                raise Unreadable(f"a row of kind {row.kind!r}")
        except Unreadable:
            state.unreadable = True
    return state


def _fold_outcome(state: RequestState, row: Row) -> None:
    for body, desktop_ids in decode_groups(row.body):
        try:
            entry = decode_entry(body, desktop_ids)
        except Unreadable:
            # as good as maybe created: the desktops' attempts stay doubtful, and no earlier outcome stands
            for desktop_id in desktop_ids:
                state.outcomes.pop(desktop_id, None)
                if row.attempt not in state.attempts.get(desktop_id, ()):
                    state.unreadable = True  # sent under an attempt whose announcement time is unknown
            continue
        for desktop_id in desktop_ids:
            state.outcomes[desktop_id] = entry
            if holds(entry):
                state.attempts.pop(desktop_id, None)
            elif isinstance(entry, ResultError) and not entry.maybe_created:
                # this attempt made nothing; earlier doubtful ones stay doubtful
                doubtful = state.attempts.get(desktop_id, {})
                doubtful.pop(row.attempt, None)
                if not doubtful:
                    state.attempts.pop(desktop_id, None)
