"""The idempotency store's contract, and the records it keeps, independent of any backend.

Every request that carries a key (its ``request_id``, else its AMQP ``message_id``) gets rows in the store:

- an **intent** row before each batch-create call that carries some of its desktops: which desktops, under
  which attempt id, at what time (POSIX seconds);
- an **outcome** row after that call: what became of those desktops (a job or an error per desktop group).

Rows are only ever added (never updated in place), so a backend needs no read-modify-write and one write per
call covers every request of the batch. Rows carry the request's **fingerprint** (its merge key and desktop
set): a request_id reused for a different request does not see the other's rows.

Backends (:mod:`.sqlite_store`, :mod:`.redis_store`) implement :class:`IdempotencyStore` and raise only
:class:`~snapworker.errors.StoreUnavailable`: third-party errors are translated at their boundary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Literal, NamedTuple, Protocol

from snapworker.contract.models import JobEntry, ResultError, SnapshotRequest
from snapworker.core import OutcomeEntry

__all__ = [
    "INTENT",
    "OUTCOME",
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


class Row(NamedTuple):
    """One record row. ``body``: the intent's desktop IDs, or the outcome's entries, as JSON text. (A tuple, not
    a dataclass: thousands are made a second, and a store can bind one as it is.)"""

    key: str
    fingerprint: str
    kind: int  # INTENT or OUTCOME
    attempt: str
    body: str
    at: float


class IdempotencyStore(Protocol):
    """Where rows live. Every method raises StoreUnavailable (and nothing else) when the store cannot answer."""

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        """The unexpired rows of each key that has any, oldest first."""
        ...

    async def record_intent(self, rows: Sequence[Row]) -> None:
        """Durably add intent rows (one write for all of them) before the call they announce."""
        ...

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        """Durably add outcome rows (one write for all of them) after the call they settle. Each has an intent
        row of the same key and attempt, recorded before or among ``rows`` (a backend may find outcomes
        through their intents); ``rows`` may hold such intent rows too."""
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
    """An outcome entry as JSON without its desktop IDs (those are stored per request beside it)."""
    kind = "job" if isinstance(entry, JobEntry) else "error"
    return json.dumps([kind, entry.model_dump(mode="json", exclude={"desktop_ids"})], separators=(",", ":"))


def _entry(body: str, desktop_ids: Sequence[str]) -> OutcomeEntry:
    kind, fields = json.loads(body)
    fields["desktop_ids"] = tuple(desktop_ids)
    if kind == "job":
        return JobEntry.model_validate(fields)
    return ResultError.model_validate(fields)


def holds(entry: OutcomeEntry) -> bool:
    """Whether a recorded entry answers the desktop for good: a job, or an error publishing again cannot fix."""
    return isinstance(entry, JobEntry) or not entry.retryable


@dataclass(slots=True)
class RequestState:
    """What the store knows of one request, per desktop: its recorded outcome (the latest), and the attempts that
    may have made a snapshot of it, with the time each was announced (POSIX seconds). A desktop announced later
    than its outcome has no outcome: it was being sent again, and that call may or may not have created a
    snapshot. An attempt stays doubtful until an outcome rules it out: an entry that holds (then the desktop is
    answered), or a retryable error that created nothing; a ``maybe_created`` error keeps it doubtful."""

    outcomes: dict[str, OutcomeEntry] = field(default_factory=dict)
    attempts: dict[str, dict[str, float]] = field(default_factory=dict)


def state_of(rows: Sequence[Row], fingerprint_: str) -> RequestState:
    """Fold a key's rows (only those of this fingerprint) into its state."""
    state = RequestState()
    for row in sorted(rows, key=lambda r: (r.at, r.kind)):
        if row.fingerprint != fingerprint_:
            continue
        if row.kind == INTENT:
            for desktop_id in json.loads(row.body):
                state.attempts.setdefault(desktop_id, {})[row.attempt] = row.at
                state.outcomes.pop(desktop_id, None)
            continue
        for body, desktop_ids in json.loads(row.body):
            entry = _entry(body, desktop_ids)
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
    return state
