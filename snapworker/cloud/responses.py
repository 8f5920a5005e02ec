"""Reading the Workspace API's answers: success bodies, Huawei's error bodies, Retry-After; pure functions.

Every non-2xx answer becomes one of the :mod:`snapworker.errors` classes, even when the body is an HTML
gateway page or empty: the caller never has to look at a raw response.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from snapworker.errors import (
    ApiAuthError,
    ApiClientError,
    ApiCredentialRefused,
    ApiError,
    ApiServerError,
    ApiStatusError,
    ApiThrottled,
)

__all__ = [
    "BAD_RESPONSE_CODE",
    "BUSY_CODE",
    "DOCUMENTED_ERRORS",
    "RETRYABLE_5XX",
    "THROTTLE_CODE",
    "DocumentedError",
    "body_snippet",
    "error_from_response",
    "is_busy",
    "may_have_processed",
    "named_desktops",
    "parse_created_job",
    "parse_json_object",
    "parse_retry_after",
    "refuses_credential",
]

#: The API gateway's flow-control error code; a throttle whatever the HTTP status.
THROTTLE_CODE = "APIG.0308"
#: "The desktop is busy, try again later" (409). Not in Huawei's published list: the simulator's code for it.
BUSY_CODE = "WKS.0110"


@dataclass(frozen=True, slots=True)
class DocumentedError:
    """An error code Huawei documents for batch-create: its usual status, and whether the same call may succeed
    later (what a result's ``retryable`` says)."""

    http_status: int
    retryable: bool
    meaning: str


#: The codes Huawei documents for Workspace (its error-code list and the batch-create page), plus BUSY_CODE.
#: ``retryable`` here overrides the class default, whatever the status the code comes with.
DOCUMENTED_ERRORS: Mapping[str, DocumentedError] = {
    "WKS.0001": DocumentedError(400, False, "empty or invalid input: the same body is refused again"),
    "WKS.0005": DocumentedError(500, True, "an ECS call failed inside the service: usually passes"),
    "WKS.0009": DocumentedError(500, True, "an IAM call failed inside the service: usually passes"),
    "WKS.00010099": DocumentedError(403, False, "the service is disabled for the account"),
    "WKS.0202": DocumentedError(404, False, "the desktop (resource) does not exist"),
    THROTTLE_CODE: DocumentedError(429, True, "flow control: retry after 2-5 s"),
    BUSY_CODE: DocumentedError(409, True, "the desktop is busy (another operation): try again later"),
}
#: Statuses whose answers are retryable whatever their code: 409 is "Operation conflict" on the batch-create
#: page, a desktop in another task's hands, which passes.
_RETRYABLE_4XX = frozenset({409})
#: 5xx statuses worth retrying; others (501 Not Implemented, 505, ...) will not change.
RETRYABLE_5XX = frozenset({500, 502, 503, 504})
#: A 2xx answer whose body we cannot read. The call may have created a job: not retryable, maybe_created.
BAD_RESPONSE_CODE = "SNAPWORKER.BAD_RESPONSE"

_SNIPPET_CHARS = 200
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP date; None if absent or unreadable.

    A date in the past means 0. ``now`` (aware) is for tests; it defaults to the current UTC time.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        # nan/inf are not delta-seconds; a negative delay means "now".
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def body_snippet(body: bytes, limit: int = _SNIPPET_CHARS) -> str:
    """A short readable excerpt of a body for an error message: tags, scripts and extra spaces removed."""
    text = body[: limit * 20].decode("utf-8", errors="replace")
    text = _SPACE.sub(" ", _TAG.sub(" ", _SCRIPT_OR_STYLE.sub(" ", text))).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None if it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _huawei_fields(data: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(error_code, error_msg, error_detail) from Huawei's body, flat or IAM-style ``{"error": {...}}``."""
    code, msg, detail = _text(data.get("error_code")), _text(data.get("error_msg")), _text(data.get("error_detail"))
    nested = data.get("error")
    if code is None and isinstance(nested, Mapping):
        code, msg = _text(nested.get("code")), msg or _text(nested.get("message"))
    return code, msg, detail


def error_from_response(
    status: int,
    reason: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: datetime | None = None,
) -> ApiStatusError:
    """The typed error for a non-2xx answer (``headers`` case-insensitive, as aiohttp gives them).

    Classification: 429 or APIG.0308 (any status) -> ApiThrottled; the credential refused (see
    :func:`refuses_credential`) -> ApiCredentialRefused; other 401/403 -> ApiAuthError; other 4xx ->
    ApiClientError (retryable only for 409, a busy desktop); 5xx -> ApiServerError (retryable only for
    500/502/503/504); anything else (an unfollowed 3xx) -> ApiStatusError, not retryable. A code in
    :data:`DOCUMENTED_ERRORS` has the ``retryable`` given there.
    """
    data = parse_json_object(body)
    code, msg, detail = _huawei_fields(data) if data is not None else (None, None, None)
    request_id = headers.get("X-Request-Id") or (_text(data.get("request_id")) if data is not None else None)
    if code is None:
        code = f"HTTP.{status}"
    if msg is None:
        # Not Huawei's body (a gateway page, a proxy's text) or no body: say what we got, briefly.
        head = f"HTTP {status} {reason or ''}".rstrip()
        snippet = body_snippet(body)
        msg = f"{head}: {snippet}" if snippet else f"{head} (empty body)"

    cls: type[ApiStatusError]
    if status == 429 or code == THROTTLE_CODE:
        cls = ApiThrottled
    elif refuses_credential(status, code):
        cls = ApiCredentialRefused
    elif status in (401, 403):
        cls = ApiAuthError
    elif 400 <= status < 500:
        cls = ApiClientError
    elif status >= 500:
        cls = ApiServerError
    else:
        cls = ApiStatusError
    error = cls(
        msg,
        http_status=status,
        error_code=code,
        error_detail=detail,
        api_request_id=request_id,
        retry_after_s=parse_retry_after(headers.get("Retry-After"), now=now),
    )
    if cls is ApiServerError and status not in RETRYABLE_5XX:
        error.retryable = False
    if cls is ApiClientError and status in _RETRYABLE_4XX:
        error.retryable = True
    documented = DOCUMENTED_ERRORS.get(code)
    if documented is not None:
        error.retryable = documented.retryable
    return error


def refuses_credential(status: int, code: str) -> bool:
    """Whether an answer refuses the caller's credential rather than the request: any 401 (the gateway could not
    authenticate: APIG.0301 bad or expired token or signature, APIG.1002 none), or a 403 from the gateway itself
    (an ``APIG.*`` code: the identity may not call the API). A 403 with a service code (``WKS.*``: the service is
    disabled, a desktop not allowed) is about the request or the account, and stays an ordinary error."""
    return status == 401 or (status == 403 and code.startswith(_GATEWAY_CODE_PREFIX))


#: The API gateway's own error codes (flow control, authentication), as opposed to the service's.
_GATEWAY_CODE_PREFIX = "APIG."
#: 5xx statuses that say the API did not process the call: the gateway's "unavailable" (429 is a throttle).
_NOT_PROCESSED_5XX = frozenset({503})
#: The Workspace service's own error codes: an answer with one is the service's word that it refused the call.
_SERVICE_CODE_PREFIX = "WKS."


def may_have_processed(error: ApiStatusError) -> bool:
    """Whether a 5xx answer to a POST leaves open that the service processed it: a gateway's 502 or 504, a page
    from a proxy, a 5xx without the service's own error code. Not for 503 (the gateway did not pass the call on)
    nor for a ``WKS.*`` error (the service answered, and it refused)."""
    if error.http_status is None or error.http_status < 500 or error.http_status in _NOT_PROCESSED_5XX:
        return False
    return not error.error_code.startswith(_SERVICE_CODE_PREFIX)


def is_busy(error: ApiError) -> bool:
    """A 409 (or WKS.0110): some desktop of the call is busy with another operation; sending it later may work.

    The client does not retry it: the sender sets the busy desktop aside and retries it alone, later, so the
    rest of its batch need not wait (see :mod:`snapworker.runtime.calls`).
    """
    return isinstance(error, ApiClientError) and (error.http_status == 409 or error.error_code == BUSY_CODE)


_ID_TOKEN = re.compile(r"[A-Za-z0-9_-]+")  # the charset of a desktop ID (models.DesktopId)


def named_desktops(error: ApiError, desktop_ids: Sequence[str]) -> list[str]:
    """The desktops of a rejected call that its answer names (``error_detail`` first, then ``error_msg``), in the
    call's order; [] if it names none. Huawei's messages carry the ID of the resource at fault
    ("... the group id is '{0}'"); matched as whole IDs, so ``d1`` is not found in ``d10``."""
    if not isinstance(error, ApiStatusError):
        return []
    wanted = set(desktop_ids)
    for text in (error.error_detail, error.error_msg):
        named = wanted.intersection(_ID_TOKEN.findall(text)) if text else set()
        if named:
            return [d for d in desktop_ids if d in named]
    return []


def _bad_response(status: int, headers: Mapping[str, str], body: bytes, what: str) -> ApiStatusError:
    error = ApiStatusError(
        f"HTTP {status} with {what}: {body_snippet(body) or '(empty body)'}",
        http_status=status,
        error_code=BAD_RESPONSE_CODE,
        api_request_id=headers.get("X-Request-Id"),
    )
    error.maybe_created = True  # the API said yes to something; we cannot tell what
    return error


def parse_created_job(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """The ``job_id`` of a 2xx batch-create answer; ApiStatusError(SNAPWORKER.BAD_RESPONSE) if it has none."""
    data = parse_json_object(body)
    job_id = data.get("job_id") if data is not None else None
    if not isinstance(job_id, str) or not job_id:
        raise _bad_response(status, headers, body, "no job_id")
    return job_id


def parse_job(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """A 2xx job query's JSON object; ApiStatusError(SNAPWORKER.BAD_RESPONSE) if the body is not one."""
    data = parse_json_object(body)
    if data is None:
        error = _bad_response(status, headers, body, "a body that is not a JSON object")
        error.maybe_created = False  # a GET creates nothing
        raise error
    return data
