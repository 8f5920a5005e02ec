"""snapworker's exceptions: one tree, so callers can catch as broadly or as narrowly as they need.

Third-party errors (aiohttp, aio-pika, pydantic) are translated at the edge that meets them
(``raise ApiTransportError(...) from exc``); nothing outside an adapter module sees them.

::

    SnapworkerError
    ├── ConfigError                 settings that cannot work, found at start-up
    ├── InvalidMessage              a queue message that is not a valid SnapshotRequest
    ├── ResultTimeout               SnapshotClient.create_snapshots got no result in time
    ├── ApiError                    the Workspace API did not create a job
    │   ├── ApiDeadlineExceeded     the request's deadline passed before the limiter let a try go
    │   ├── ApiCallAbandoned        nobody waits for the call's answer any more: the try was not sent
    │   ├── ApiTransportError       no HTTP response, and nothing was sent (connect, DNS, TLS refused)
    │   │   └── ApiResponseLost     the request may have reached the API, and no answer came: maybe created
    │   │       └── ApiResponseTimeout  ... because the answer did not come in time
    │   └── ApiStatusError          an HTTP error response, with Huawei's error body parsed
    │       ├── ApiThrottled        429, or APIG.0308 in any status
    │       ├── ApiServerError      5xx
    │       └── ApiClientError      other 4xx: permanent
    │           └── ApiAuthError    401 / 403
    │               └── ApiCredentialRefused  401, or a gateway 403: the worker's credential, not the request
    ├── BrokerError                 RabbitMQ refused or lost something
    │   ├── BrokerRefused           permanent: wrong credentials or vhost; retrying cannot help
    │   ├── UnroutableResult        a result was returned by the broker (no such queue)
    │   └── MessageTooLarge         a message too large to publish: refused before anything was sent
    └── StoreUnavailable            the idempotency store (SQLite or Redis) cannot be read or written now
"""

from __future__ import annotations

__all__ = [
    "ApiAuthError",
    "ApiCallAbandoned",
    "ApiClientError",
    "ApiCredentialRefused",
    "ApiDeadlineExceeded",
    "ApiError",
    "ApiResponseLost",
    "ApiResponseTimeout",
    "ApiServerError",
    "ApiStatusError",
    "ApiThrottled",
    "ApiTransportError",
    "BrokerError",
    "BrokerRefused",
    "ConfigError",
    "InvalidMessage",
    "MessageTooLarge",
    "ResultTimeout",
    "SnapworkerError",
    "StoreUnavailable",
    "UnroutableResult",
]


class SnapworkerError(Exception):
    """Base of every exception snapworker raises on purpose."""


class ConfigError(SnapworkerError):
    """The settings cannot work; the message says which setting and why."""


class InvalidMessage(SnapworkerError):
    """A queue message is not a valid request. ``problems`` are readable validation messages."""

    def __init__(self, problems: list[str], *, project_id: str | None = None) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
        self.project_id = project_id


class ResultTimeout(SnapworkerError):
    """No result arrived in time for a request sent with ``SnapshotClient.create_snapshots``.

    The request was (or may have been) queued and may still be done: snapshots may be created anyway.
    """

    def __init__(self, correlation_id: str, timeout_s: float) -> None:
        super().__init__(
            f"no result for correlation id {correlation_id!r} within {timeout_s:g} s; the request may still be "
            f"processed and its snapshots created"
        )
        self.correlation_id = correlation_id
        self.timeout_s = timeout_s


class ApiError(SnapworkerError):
    """A batch-create call did not create a job.

    ``retryable`` says whether the same call may succeed later; ``maybe_created`` whether the cloud may have
    created the job although we saw no success (the response was lost); ``tries``: the tries the call made
    before it gave up (throttled ones not counted).
    """

    retryable: bool = False
    maybe_created: bool = False
    tries: int = 1
    http_status: int | None = None
    error_code: str = "SNAPWORKER.API_ERROR"
    error_detail: str | None = None
    api_request_id: str | None = None

    @property
    def error_msg(self) -> str:
        return str(self)


class ApiDeadlineExceeded(ApiError):
    """REQUEST_DEADLINE_S passed while the call waited for the rate limiter (throttled): nothing was sent."""

    retryable = True
    error_code = "SNAPWORKER.DEADLINE"


class ApiCallAbandoned(ApiError):
    """The call's lease lapsed before a try was sent: no live broker session holds the requests it would answer
    (they went back to the queue, and may already be another worker's), the worker is stopping, or its intent
    could not be renewed. Nothing was sent by this try."""

    retryable = True
    error_code = "SNAPWORKER.NOT_SENT"


class ApiTransportError(ApiError):
    """No HTTP response, and no byte of the request reached the socket (connecting, DNS or TLS failed): the
    API cannot have processed it, so sending it again is safe."""

    retryable = True
    error_code = "SNAPWORKER.TRANSPORT"


class ApiResponseLost(ApiTransportError):
    """The request was (at least partly) written, and no usable answer came: the connection dropped or was
    reset, or the answer's body broke off. The API may have processed it: ``maybe_created``. A POST is never
    sent again before the API's snapshots were checked (reconciled)."""

    maybe_created = True
    error_code = "SNAPWORKER.RESPONSE_LOST"


class ApiResponseTimeout(ApiResponseLost):
    """The request was sent but the response did not arrive in time."""

    error_code = "SNAPWORKER.RESPONSE_TIMEOUT"


class ApiStatusError(ApiError):
    """The API answered with an error status. Huawei's error body fields are kept as sent."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        error_code: str,
        error_detail: str | None = None,
        api_request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.error_detail = error_detail
        self.api_request_id = api_request_id
        self.retry_after_s = retry_after_s


class ApiThrottled(ApiStatusError):
    """The API gateway's flow control said no (429 / APIG.0308). Retry after ``retry_after_s``."""

    retryable = True


class ApiServerError(ApiStatusError):
    """A 5xx answer; usually passes."""

    retryable = True


class ApiClientError(ApiStatusError):
    """A 4xx answer other than throttling: the same call will fail again."""


class ApiAuthError(ApiClientError):
    """401 or 403: the credentials are wrong, expired or not allowed."""


class ApiCredentialRefused(ApiAuthError):
    """The API gateway refused the worker's credential (401, or a 403 with an ``APIG.*`` code): wrong, expired or
    rotated. A fault of the worker, not of the request: nothing was processed, and the same request succeeds once
    the credential works again, so it is retryable. The worker stops consuming until then (see
    :mod:`snapworker.runtime.credential_pause`)."""

    retryable = True


class BrokerError(SnapworkerError):
    """RabbitMQ refused or lost something."""


class BrokerRefused(BrokerError):
    """RabbitMQ refused the connection for a reason that retrying cannot fix: a wrong user name or password
    (ACCESS_REFUSED), or a virtual host that does not exist or that the user may not use. The message names the
    broker (password hidden) and what to change."""


class UnroutableResult(BrokerError):
    """The broker returned a published result: the queue it was addressed to does not exist."""


class MessageTooLarge(BrokerError):
    """A message was not published because it is too large; nothing of it reached the channel.

    ``part`` is ``"body"`` (over the body limit: RabbitMQ closes the channel of a message over its
    ``max_message_size``) or ``"properties"`` (the content header, mostly headers, over one frame: RabbitMQ closes
    the connection). ``size`` is that part's size in bytes, ``limit`` the most allowed. Other messages of the same
    call are published as usual.
    """

    def __init__(self, queue: str, *, part: str, size: int, limit: int) -> None:
        super().__init__(f"message to {queue!r} not published: its {part} is {size} bytes, over {limit}")
        self.queue = queue
        self.part = part
        self.size = size
        self.limit = limit


class StoreUnavailable(SnapworkerError):
    """The idempotency store (SQLite file or Redis) could not be read or written. The worker then holds the
    messages it cannot check (in memory, looked up again every IDEMPOTENCY_HOLD_S) rather than call the API
    blindly. A store file of a newer layout than this version's is refused with this error too, and left as it is."""
