"""Reading a request message: bytes and AMQP properties in, a valid request or an ``invalid`` result out.

Pure: no broker types, so the same rules apply to the worker, the publisher client and the CLI.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from snapworker.models import INVALID_REQUEST_CODE, ResultError, SnapshotRequest, SnapshotResult

__all__ = ["Accepted", "Envelope", "Rejected", "read_request", "validation_problems"]

_JSON_TYPES = frozenset({"application/json", "text/json"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request message as the broker delivered it."""

    body: bytes
    content_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Accepted:
    request: SnapshotRequest
    request_id: str
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Not a valid request: publish ``result``, then dead-letter the message."""

    result: SnapshotResult


def read_request(envelope: Envelope, *, max_bytes: int, now: datetime) -> Accepted | Rejected:
    """Validate one message against the contract. Never raises for bad input."""
    fallback_id = envelope.message_id or str(uuid.uuid4())
    if len(envelope.body) > max_bytes:
        return _rejected(
            envelope, fallback_id, [f"body is {len(envelope.body)} bytes, over the limit of {max_bytes}"], now
        )
    content_type = (envelope.content_type or "").split(";")[0].strip().lower()
    # A missing content type is tolerated (many clients omit it); a different one is a publisher's mistake.
    if content_type and content_type not in _JSON_TYPES:
        return _rejected(envelope, fallback_id, [f"content type must be application/json, got {content_type!r}"], now)
    try:
        request = SnapshotRequest.model_validate_json(envelope.body)
    except ValidationError as exc:
        return _rejected(envelope, fallback_id, validation_problems(exc), now, _salvage(envelope.body))
    request_id = request.request_id or fallback_id
    return Accepted(request, request_id, envelope.correlation_id)


def validation_problems(exc: ValidationError) -> list[str]:
    """Readable ``field: message`` lines of a pydantic error (the worker, the client and the tools share them)."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"])
        problems.append(f"{where}: {err['msg']}" if where else err["msg"])
    return problems


@dataclass(frozen=True, slots=True)
class _Salvage:
    request_id: str | None = None
    project_id: str | None = None
    desktop_ids: tuple[str, ...] = ()


def _salvage(body: bytes) -> _Salvage:
    """Whatever readable fields an invalid request has, so its result can name them."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: thousands of nested arrays
        return _Salvage()
    if not isinstance(data, dict):
        return _Salvage()

    def text(value: object, limit: int) -> str | None:
        return value if isinstance(value, str) and 0 < len(value) <= limit else None

    raw_ids = data.get("desktop_ids")
    desktop_ids: tuple[str, ...] = ()
    if isinstance(raw_ids, list):
        readable = (d for d in raw_ids if isinstance(d, str) and 0 < len(d) <= 128)
        desktop_ids = tuple(dict.fromkeys(readable))[:1000]
    return _Salvage(text(data.get("request_id"), 128), text(data.get("project_id"), 64), desktop_ids)


def _rejected(
    envelope: Envelope, fallback_id: str, problems: list[str], now: datetime, salvage: _Salvage = _Salvage()
) -> Rejected:
    error = ResultError(
        desktop_ids=salvage.desktop_ids,
        http_status=None,
        error_code=INVALID_REQUEST_CODE,
        error_msg="; ".join(problems)[:4000],
        error_detail=None,
        retryable=False,
    )
    result = SnapshotResult(
        request_id=salvage.request_id or fallback_id,
        correlation_id=envelope.correlation_id,
        project_id=salvage.project_id,
        status="invalid",
        finished_at=now,
        errors=(error,),
    )
    return Rejected(result)
