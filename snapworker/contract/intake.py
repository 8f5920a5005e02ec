"""Reading a request message: bytes and AMQP properties in, a valid request or an ``invalid`` result out.

Pure: no broker types, so the same rules apply to the worker, the publisher client and the CLI.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from snapworker.contract.models import INVALID_REQUEST_CODE, ResultError, SnapshotRequest, SnapshotResult

__all__ = ["Accepted", "Envelope", "Rejected", "read_request", "validation_problems"]

_JSON_TYPES = frozenset({"application/json", "text/json"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A request message as the broker delivered it.

    ``priority`` is its AMQP priority property (None: not set); ``from_urgent_queue`` says that it came from an
    urgent queue (see docs/urgent.md). The request is urgent when it came from an urgent queue, or else when
    :func:`~snapworker.contract.priority.is_urgent` says so from its body's ``priority`` and ``priority`` here.
    """

    body: bytes
    content_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    priority: int | None = None
    from_urgent_queue: bool = False


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
        problems = validation_problems(exc)
        if any(err["type"] == "json_invalid" for err in exc.errors(include_url=False)):
            problems += _why_unreadable(envelope.body)
        return _rejected(envelope, fallback_id, problems, now, _salvage(envelope.body))
    request_id = request.request_id or fallback_id
    return Accepted(request, request_id, envelope.correlation_id)


def validation_problems(exc: ValidationError) -> list[str]:
    """Readable ``field: message`` lines of a pydantic error (the worker, the client and the tools share them)."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"])
        problems.append(f"{where}: {err['msg']}" if where else err["msg"])
    return problems


_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


def _why_unreadable(body: bytes) -> list[str]:
    """What a publisher most likely did wrong when the body does not parse as JSON at all (empty if no idea)."""
    if not body.strip():
        return ["the body is empty"]
    if body.startswith(b"\x1f\x8b"):
        return ["the body is gzip-compressed: send uncompressed UTF-8 JSON (no content encoding)"]
    if body.startswith(b"\xef\xbb\xbf"):
        return ["the body starts with a UTF-8 byte order mark: send UTF-8 JSON without one"]
    if body.startswith(_UTF16_32_BOMS) or b"\x00" in body[:4]:
        return ["the body looks like UTF-16 or UTF-32 text: JSON requests must be UTF-8"]
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"the body is not UTF-8 text (byte {exc.start}): JSON requests must be UTF-8"]
    return []


def _utf8(value: str) -> bool:
    """Whether ``value`` can be written as UTF-8: json.loads lets lone surrogates (``"\\ud800"``) through."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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

    # Only text the result can carry: a lone surrogate would make the result impossible to serialise.
    def text(value: object, limit: int) -> str | None:
        return value if isinstance(value, str) and 0 < len(value) <= limit and _utf8(value) else None

    raw_ids = data.get("desktop_ids")
    desktop_ids: tuple[str, ...] = ()
    if isinstance(raw_ids, list):
        readable = (d for d in raw_ids if isinstance(d, str) and text(d, 128) is not None)
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
