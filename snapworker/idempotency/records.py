"""The records' own format: how intents and outcomes are stored and read back, apart from the wire contract.

The wire models (:mod:`snapworker.contract.models`) forbid unknown fields: right for messages from other
services, wrong for records, which a newer snapworker sharing the store (a rolling upgrade, a rollback) may have
written with fields this version does not know. So records are encoded and decoded here, field by field.

- **The format of schema 2** (the SQLite file's ``user_version``, the Redis store's schema key): an intent's body
  is a JSON array of desktop IDs; an outcome's body a JSON array of ``[entry, [desktop IDs]]`` pairs, each entry
  a JSON string ``[kind, {fields}]``, kind ``"job"`` (fields :data:`JOB_FIELDS`) or ``"error"``
  (:data:`ERROR_FIELDS`). Desktop IDs are stored beside the entry, per request.
- **Additions keep the schema version**: a newer version may add fields, array elements after the known ones, or
  kinds; this one ignores fields and elements it does not know, and takes what it cannot read as doubtful. A
  change an older version would misread (a field's meaning, a field made required, the layout) takes a new
  schema version, and a store of a newer version than its own is refused by every version (never emptied).
- **Unreadable is doubtful, never an error**: the decoders raise :class:`Unreadable` (bad JSON, a missing or
  ill-typed field, an unknown kind), which :func:`~snapworker.idempotency.store.state_of` turns into doubt about
  that one request: it never fails a lookup, so it never strands the requests gathered with it.
"""

from __future__ import annotations

import json

from snapworker.contract.models import JobEntry, ResultError
from snapworker.core import OutcomeEntry
from snapworker.errors import StoreUnavailable

__all__ = [
    "ERROR_FIELDS",
    "JOB_FIELDS",
    "Unreadable",
    "decode_desktops",
    "decode_entry",
    "decode_groups",
    "encode_entry",
    "refuse_newer",
]

#: The stored fields of each kind of entry (a wire model's fields but its desktop IDs). A test fails when the wire
#: models gain a field these do not name: storing it is then a decision, not an accident.
JOB_FIELDS = ("job_id", "possible_duplicate")
ERROR_FIELDS = (
    "http_status",
    "error_code",
    "error_msg",
    "error_detail",
    "api_request_id",
    "retryable",
    "maybe_created",
)
_DECODING_ERRORS = (ValueError, LookupError, TypeError, AttributeError)  # pydantic's ValidationError: a ValueError
_encode = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call as json.dumps makes


class Unreadable(ValueError):
    """A record (or part of one) this version cannot read: written by a newer version, or damaged."""


def refuse_newer(found: int, own: int, store: str, apart: str) -> None:
    """StoreUnavailable if a store's schema version (``found``) is newer than this version's (``own``): it is
    refused, and left as it is; never emptied nor rewritten. ``store`` names it, ``apart`` the alternative."""
    if found > own:
        raise StoreUnavailable(
            f"{store}: its schema version {found} is newer than this version's {own}: a newer snapworker writes "
            f"it, and its records are left as they are. Give this worker {apart} of its own, or run the newer one"
        )


def encode_entry(entry: OutcomeEntry) -> str:
    """An outcome entry as stored: ``[kind, {fields}]`` without its desktop IDs (stored per request beside it)."""
    if isinstance(entry, JobEntry):
        return _encode(["job", {name: getattr(entry, name) for name in JOB_FIELDS}])
    return _encode(["error", {name: getattr(entry, name) for name in ERROR_FIELDS}])


def decode_entry(body: str, desktop_ids: tuple[str, ...]) -> OutcomeEntry:
    """The entry ``body`` stores (see :func:`encode_entry`), for ``desktop_ids``. Fields it does not know are
    ignored, optional ones it lacks take their defaults; Unreadable if a required one is missing or ill-typed."""
    try:
        stored = json.loads(body)
        kind, fields = stored[0], stored[1]
        if kind == "job":
            return JobEntry(
                job_id=fields["job_id"],
                desktop_ids=desktop_ids,
                possible_duplicate=fields.get("possible_duplicate", False),
            )
        if kind == "error":
            return ResultError(
                desktop_ids=desktop_ids,
                http_status=fields["http_status"],
                error_code=fields["error_code"],
                error_msg=fields["error_msg"],
                error_detail=fields.get("error_detail"),
                api_request_id=fields.get("api_request_id"),
                retryable=fields["retryable"],
                maybe_created=fields.get("maybe_created", False),
            )
    except _DECODING_ERRORS as exc:
        raise Unreadable(f"an outcome entry: {exc}") from exc
    raise Unreadable(f"an outcome entry of unknown kind {kind!r}")


def decode_desktops(body: str) -> list[str]:
    """An intent's desktop IDs; Unreadable unless ``body`` is a JSON array of strings."""
    try:
        desktops = json.loads(body)
    except _DECODING_ERRORS as exc:
        raise Unreadable(f"an intent: {exc}") from exc
    if type(desktops) is not list:
        raise Unreadable("an intent that is not an array of desktop IDs")
    for desktop_id in desktops:  # a loop, not any(...): a generator costs more than a short array's checks
        if type(desktop_id) is not str:
            raise Unreadable("an intent whose desktop IDs are not strings")
    return desktops


def decode_groups(body: str) -> list[tuple[str, tuple[str, ...]]]:
    """An outcome's ``(entry, desktop IDs)`` pairs, entries still encoded (each is decoded on its own: one that
    cannot be read leaves its desktops' attempt doubtful, not the whole row). Unreadable unless every pair's
    framing is readable: then nothing of the row is applied, rather than part of it."""
    groups = []
    try:
        for group in json.loads(body):
            entry, desktop_ids = group[0], group[1]
            if type(entry) is not str or type(desktop_ids) is not list:
                raise Unreadable("an outcome whose pairs are not [entry, [desktop IDs]]")
            for desktop_id in desktop_ids:
                if type(desktop_id) is not str:
                    raise Unreadable("an outcome whose desktop IDs are not strings")
            groups.append((entry, tuple(desktop_ids)))
    except Unreadable:
        raise
    except _DECODING_ERRORS as exc:
        raise Unreadable(f"an outcome: {exc}") from exc
    return groups
