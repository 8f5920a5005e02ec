"""Whether a failed try was sent: aiohttp's tracing marks the moment, and a failure becomes the typed error.

A try counts as *not sent* only if it failed before its headers were handed to the connection: connecting, DNS,
TLS, a proxy (nothing of the request can have reached the API). Anything later may have been processed, and is
:class:`~snapworker.errors.ApiResponseLost` (``maybe_created``).
"""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp

from snapworker.errors import ApiResponseLost, ApiResponseTimeout, ApiTransportError

__all__ = ["TryTrace", "failed_try", "sent_trace"]


class TryTrace:
    """One try's progress, as aiohttp's tracing tells it. ``sent``: None when the session has no such tracing (a
    session given from outside): then any failure past connecting counts as possibly sent."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent: bool | None = None


def sent_trace() -> aiohttp.TraceConfig:
    """Tracing that marks a try as sent just before its headers go to the connection (nothing earlier reaches
    the socket: the connection is made, or taken from the pool, before). Pass a :class:`TryTrace` as the
    request's ``trace_request_ctx``."""

    async def on_start(_: aiohttp.ClientSession, ctx: SimpleNamespace, __: aiohttp.TraceRequestStartParams) -> None:
        if isinstance(ctx.trace_request_ctx, TryTrace):
            ctx.trace_request_ctx.sent = False

    async def on_headers(
        _: aiohttp.ClientSession, ctx: SimpleNamespace, __: aiohttp.TraceRequestHeadersSentParams
    ) -> None:
        if isinstance(ctx.trace_request_ctx, TryTrace):
            ctx.trace_request_ctx.sent = True

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_headers_sent.append(on_headers)
    return trace


def failed_try(exc: BaseException, trace: TryTrace, where: str, read_timeout_s: float) -> ApiTransportError:
    """The typed error of a try that raised ``exc`` (aiohttp's, or a timeout) at the stage ``trace`` saw;
    ``where`` (method and path) goes into the message. Raise it ``from exc``."""
    what = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ApiTransportError(f"cannot connect to the Workspace API: {what}")
    if trace.sent is False:  # failed before a byte of the request was handed to the socket
        return ApiTransportError(f"cannot reach the Workspace API (nothing sent): {what}")
    if isinstance(exc, TimeoutError):
        return ApiResponseTimeout(
            f"no response from the Workspace API within {read_timeout_s:g} s ({where}); the request was sent"
        )
    return ApiResponseLost(f"the connection broke after the request was sent, before its answer ({where}): {what}")
