"""The Workspace API client: batch-create and reads over one aiohttp session, retried and rate limited.

aiohttp stops here: its exceptions become :mod:`snapworker.errors` classes (``raise ... from exc``) and its
responses become parsed values. Authentication is an IAM token (``X-Auth-Token``) or an AK/SK signature made
afresh for every try (new ``X-Sdk-Date``) over the exact body bytes sent.

Retries (rules in :class:`~snapworker.cloud.retry.RetryPolicy`): a try starts when the rate limiter grants
it (the first try may bring a grant the caller already holds: the worker asks for a call before it cuts the
batch); waiting for the limiter is never a try. The time budget starts when the first try is granted. A throttled
try (429 / APIG.0308) is not a retry either: it cuts and pauses the limiter and waits for it, spending neither
tries nor the time budget, until the caller's ``deadline`` (or, without one, the time budget) would pass.

**A failed try is classified by when it failed.** It was *not sent* only if it failed before any byte of the
request could reach the socket (connecting, DNS, TLS: aiohttp's ``on_request_headers_sent`` had not fired), or if
the answer says the API did not process it (429, 503). Anything later (a reset, a dropped connection, a broken
answer body, a response timeout, a gateway's 502/504 or a 5xx that is not the Workspace service's own error) is
:class:`~snapworker.errors.ApiResponseLost`, ``maybe_created``: a POST is then never tried again here; the
sender lists the desktops' snapshots first (:mod:`snapworker.idempotency.reconcile`). Reads (GET) retry anything
retryable.

Reads go through a budget of their own (:attr:`WorkspaceClient.read_limiter`, READ_RATE_LIMIT /
READ_RATE_BURST), never batch-create's: job tracking and reconciliation share it. The connection pool has no cap
of its own: both limiters bound the calls in flight, so a try never waits for a pooled connection, and no timeout
counts such a wait (``connect`` covers DNS, TCP and TLS; ``sock_read`` the wait for each part of the answer).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import backoff
from yarl import URL

from snapworker.cloud.body import batch_create_body
from snapworker.cloud.credential import Credential, CredentialWatch
from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.cloud.responses import error_from_response, may_have_processed, parse_created_job, parse_job
from snapworker.cloud.retry import RetryPolicy
from snapworker.cloud.sent import TryTrace, failed_try, sent_trace
from snapworker.cloud.signing import sdk_date_now
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.keys import MergeKey
from snapworker.errors import (
    ApiCallAbandoned,
    ApiCredentialRefused,
    ApiDeadlineExceeded,
    ApiError,
    ApiResponseTimeout,
    ApiServerError,
    ApiThrottled,
)
from snapworker.settings import Settings

__all__ = ["ClientObserver", "WorkspaceClient"]

log = logging.getLogger("snapworker.cloud")

#: Reads are paced this much under READ_RATE_LIMIT. At the full rate, the (N+1)th read of a busy second is granted
#: exactly one second after the first, and a few ms of jitter on the way (the event loop, the network) would put
#: N+1 into one second at the API: the headroom keeps every second at READ_RATE_LIMIT reads or fewer.
_READ_HEADROOM = 0.9


class ClientObserver(Protocol):
    """Metrics hook. ``status_class`` is ``"2xx"``, ``"4xx"``, ``"5xx"``, ``"timeout"`` or ``"transport"``."""

    def on_call(self, status_class: str, seconds: float) -> None: ...
    def on_retry(self) -> None: ...
    def on_throttle(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class WorkspaceClient:
    """One credential's connection to the Workspace API. Use as ``async with WorkspaceClient(settings) as c:``.

    ``limiter`` (batch-create's) defaults to one built from ``settings``; share one limiter between clients of one
    credential. ``read_limiter`` (every GET's) defaults to READ_RATE_LIMIT / READ_RATE_BURST, at most
    MAX_CONCURRENCY reads in flight. A given ``session`` is used as is and not closed; otherwise the client makes
    (and closes) its own. ``credential_watch`` hears of every refusal of the credential (named ``who``).
    ``clock``/``sleep``/``jitter``/``sdk_date`` are for tests.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: Limiter | None = None,
        read_limiter: Limiter | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: ClientObserver | None = None,
        credential_watch: CredentialWatch | None = None,
        who: str = "default",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[float], float] = backoff.full_jitter,
        sdk_date: Callable[[], str] = sdk_date_now,
    ) -> None:
        self._settings = settings
        self._base_url = settings.api_url.rstrip("/")
        self._limiter: Limiter = limiter if limiter is not None else RateLimiter.from_settings(settings)
        self._read_limiter: Limiter = (
            read_limiter
            if read_limiter is not None
            else RateLimiter(
                settings.read_rate_limit * _READ_HEADROOM, settings.read_rate_burst, settings.max_concurrency
            )
        )
        self._session = session
        self._owns_session = session is None
        self._observer = observer
        self._policy = RetryPolicy.from_settings(settings)
        self._clock, self._sleep, self._jitter = clock, sleep, jitter
        self._credential = Credential(settings, who=who, watch=credential_watch, sdk_date=sdk_date)
        self._proxy = settings.api_proxy.get_secret_value() if settings.api_proxy is not None else None

    @property
    def limiter(self) -> Limiter:
        """Batch-create's budget."""
        return self._limiter

    @property
    def read_limiter(self) -> Limiter:
        """The reads' budget (job tracking and reconciliation share it)."""
        return self._read_limiter

    # -- lifecycle
    async def __aenter__(self) -> WorkspaceClient:
        self._get_session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client made, and its read budget (batch-create's limiter is the caller's)."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        await self._read_limiter.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # Made lazily: aiohttp binds a session to the running event loop.
        if self._session is None:
            s = self._settings
            connector = aiohttp.TCPConnector(
                # No cap here: the limiters cap the calls in flight (MAX_CONCURRENCY each for batch-create and
                # reads). A capped pool would make a try wait for a connection, and a POST timed out while it
                # waited would look like one the API might have processed.
                limit=0,
                # verify certificates and host names; API_CA_FILE: against that bundle (a corporate CA)
                ssl=ssl.create_default_context(cafile=str(Path(s.api_ca_file).expanduser())) if s.api_ca_file else True,
            )
            timeout = aiohttp.ClientTimeout(
                # connect bounds DNS, TCP and TLS (ConnectionTimeoutError: nothing was sent); sock_read bounds the
                # wait for each part of the answer. No total: it would count the time before sending too.
                total=None,
                connect=s.connect_timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=s.read_timeout_s,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=[sent_trace()])
        return self._session

    # -- API
    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        marker: str | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> CreatedJob:
        """Create snapshots of ``desktop_ids`` (1..100) with ``key``'s settings; retried as the module says.

        ``grant``: a call the limiter already granted for this batch (the first try uses it; released here).
        ``deadline`` (this client's clock): throttled tries are repeated until then, not counted as retries.
        ``marker``: the attempt's description for undescribed disks (:func:`batch_create_body`).
        ``max_tries``: what is left of RETRY_MAX_TRIES for this batch (None: all of it).
        ``lease``: asked before every try (:mod:`snapworker.cloud.lease`); once it lapses, no try is sent and the
        call raises :class:`~snapworker.errors.ApiCallAbandoned`.
        Raises an :class:`~snapworker.errors.ApiError` subclass when no job was created, as far as we know; one
        with ``maybe_created`` (never tried again here) when the API may have processed the call.
        """
        try:
            body = batch_create_body(key, desktop_ids, marker=marker)
        except BaseException:
            if grant is not None:
                self._limiter.release()  # the granted call is not made: its place goes to the next
            raise
        path = f"/v2/{quote(key.project_id, safe='')}/snapshots/batch-create"
        response = await self._call(
            "POST",
            path,
            key.project_id,
            body,
            idempotent=False,
            limited=True,
            grant=grant,
            deadline=deadline,
            max_tries=max_tries,
            lease=lease,
        )
        job_id = parse_created_job(response.status, response.headers, response.body)
        return CreatedJob(job_id, response.headers.get("X-Request-Id"))

    async def get_job(self, project_id: str, job_id: str, *, limiter: Limiter | None = None) -> dict[str, Any]:
        """The job document of ``GET /v2/{project_id}/workspace-jobs/{job_id}`` as sent by the API.

        ``limiter``: the read budget each try waits for (None: :attr:`read_limiter`)."""
        path = f"/v2/{quote(project_id, safe='')}/workspace-jobs/{quote(job_id, safe='')}"
        return await self.get_json(path, project_id, limiter=limiter)

    async def get_json(
        self, path: str, project_id: str, *, limiter: Limiter | None = None, grant: Grant | None = None
    ) -> dict[str, Any]:
        """A GET of ``path`` (already quoted, with its query) whose 2xx answer is a JSON object; retried like
        every call, each try through ``limiter`` (None: :attr:`read_limiter`; never batch-create's). ``grant``:
        a read that limiter already granted, for the first try (released here)."""
        response = await self._call(
            "GET",
            path,
            project_id,
            b"",
            idempotent=True,
            limited=True,
            limiter=limiter or self._read_limiter,
            grant=grant,
        )
        return parse_job(response.status, response.headers, response.body)

    async def verify_credential(self, project_id: str) -> None:
        """One cheap authenticated read (the first snapshot of ``project_id``, through the read budget): returns
        if the API accepts the credential; raises ApiCredentialRefused (reported to the watch) if it does not, or
        another ApiError if the API could not tell."""
        await self.get_json(f"/v2/{quote(project_id, safe='')}/snapshots?limit=1", project_id)

    # -- retries
    async def _call(
        self,
        method: str,
        path: str,
        project_id: str,
        body: bytes,
        *,
        idempotent: bool,
        limited: bool,
        grant: Grant | None = None,
        deadline: float | None = None,
        limiter: Limiter | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> _Response:
        """One call with its retries: the 2xx response. The error raised carries the ``tries`` made.

        A throttled try is not a retry: it spends neither ``max_tries`` nor the time budget (the limiter's
        pause is the wait), and is repeated until ``deadline``. Dramatiq's rate limits burn retries on
        throttling, so a worker set above the API's real limit fails requests; this one only waits.
        """
        url = self._base_url + path
        limiter = limiter if limiter is not None else self._limiter
        policy = self._policy if max_tries is None else replace(self._policy, max_tries=max(max_tries, 1))
        delays = policy.backoff_delays()
        started: float | None = None
        attempt = 0
        excused_s = 0.0  # time spent waiting out throttles: not part of the retry time budget
        throttled_at: float | None = None
        reloaded = False  # the token file was read again after a refusal: at most once per call
        while True:
            async with self._try_slot(limiter, project_id, limited, grant, deadline, lease) as slot:
                grant = None  # only the first try uses a grant made before the call
                now = self._clock()
                if started is None:
                    started = now
                if throttled_at is not None:
                    excused_s += now - throttled_at
                    throttled_at = None
                try:
                    return await self._try_once(method, url, project_id, body)
                except ApiThrottled as exc:
                    if slot is not None:
                        limiter.on_throttle(exc.retry_after_s, sent_at=slot.granted_at)
                    if self._observer is not None:
                        self._observer.on_throttle()
                    error: ApiError = exc
                except ApiError as exc:
                    error = exc
            # Outside the slot: while this call backs off, its place goes to another.
            if isinstance(error, ApiCredentialRefused):
                if not reloaded and self._credential.reload():
                    reloaded = True
                    continue  # a token rotated meanwhile: try it at once (a refused call was not processed)
                error.tries = max(attempt, 1)
                self._credential.report(error, lambda: self.verify_credential(project_id))
                raise error
            if not idempotent and isinstance(error, ApiServerError) and may_have_processed(error):
                error.maybe_created = True  # a gateway's 502/504 or a page: the service may have taken the call
            if isinstance(error, ApiThrottled) and limited:
                # Without a request deadline, the retry time budget is the deadline for throttled tries too.
                until = deadline if deadline is not None else started + self._policy.max_time_s
                resume_at = self._clock() + (error.retry_after_s or 0.0)
                if resume_at >= until:
                    error.tries = max(attempt, 1)
                    raise error
                throttled_at = self._clock()
                log.debug(  # per try: the limiter logs one WARNING per overload, with the rate it cut to
                    "throttled (%s) on %s %s for project_id=%s: waiting for the limiter",
                    error.error_code,
                    method,
                    path,
                    project_id,
                    extra={"project_id": project_id, "error_code": error.error_code},
                )
                if self._observer is not None:
                    self._observer.on_retry()
                continue  # the limiter holds the next try until its pause ends
            attempt += 1
            error.tries = attempt
            delay = policy.next_delay(
                error,
                attempt=attempt,
                elapsed_s=self._clock() - started - excused_s,
                backoff_s=self._jitter(next(delays)),
                idempotent=idempotent,
            )
            if delay is not None and deadline is not None:
                delay = None if self._clock() + delay >= deadline else delay
            if delay is None:
                raise error
            log.warning(
                "retrying %s %s in %.2f s: project_id=%s status=%s error_code=%s attempt=%d api_request_id=%s",
                method,
                path,
                delay,
                project_id,
                error.http_status,
                error.error_code,
                attempt,
                error.api_request_id,
                extra={
                    "project_id": project_id,
                    "http_status": error.http_status,
                    "error_code": error.error_code,
                    "attempt": attempt,
                    "api_request_id": error.api_request_id,
                    "retry_in_s": delay,
                },
            )
            if self._observer is not None:
                self._observer.on_retry()
            await self._sleep(delay)

    @asynccontextmanager
    async def _try_slot(
        self,
        limiter: Limiter,
        project_id: str,
        limited: bool,
        grant: Grant | None,
        deadline: float | None,
        lease: CallLease | None = None,
    ) -> AsyncIterator[Grant | None]:
        """The limiter's permission for one try: ``grant`` if given, else a new one, waited for until
        ``deadline`` (then the call fails as throttled: it never got its turn) or until ``lease`` lapses (then
        it fails abandoned); once granted, ``lease.before_try()`` has the last word."""
        if not limited:
            yield None
            return
        if grant is None:
            timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
            try:
                grant = await asyncio.wait_for(_acquire(limiter, project_id, lease), timeout)
            except TimeoutError as exc:
                raise ApiDeadlineExceeded(
                    "the request's deadline (REQUEST_DEADLINE_S) passed while it waited for the rate limiter"
                ) from exc
        try:
            if lease is not None and (lease.lapsed.is_set() or not await lease.before_try()):
                raise ApiCallAbandoned("not sent: nobody waits for this call's answer any more")
            yield grant
        finally:
            limiter.release()

    # -- one try
    async def _try_once(self, method: str, url: str, project_id: str, body: bytes) -> _Response:
        """Send once; the 2xx response, or raise the typed error (see the module: classified by when it failed)."""
        headers = self._credential.headers(method, url, project_id, body)
        started = self._clock()
        trace = TryTrace()
        try:
            async with self._get_session().request(
                method,
                URL(url, encoded=True),  # send the path exactly as signed
                data=body or None,
                headers=headers,
                allow_redirects=False,  # a redirect would resend a signed POST elsewhere
                proxy=self._proxy,
                trace_request_ctx=trace,
            ) as resp:
                data = await resp.read()
                status, reason, resp_headers = resp.status, resp.reason, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = failed_try(exc, trace, f"{method} {URL(url).path}", self._settings.read_timeout_s)
            self._observe("timeout" if isinstance(error, ApiResponseTimeout) else "transport", started)
            raise error from exc
        self._observe(f"{status // 100}xx", started)
        if not 200 <= status < 300:
            raise error_from_response(status, reason, resp_headers, data)
        return _Response(status, resp_headers, data)

    def _observe(self, status_class: str, started: float) -> None:
        if self._observer is not None:
            self._observer.on_call(status_class, self._clock() - started)


async def _acquire(limiter: Limiter, project_id: str, lease: CallLease | None) -> Grant:
    """A grant of ``limiter``, unless ``lease`` lapses first (then ApiCallAbandoned, and no grant is kept)."""
    if lease is None:
        return await limiter.acquire(project_id)
    if lease.lapsed.is_set():
        raise ApiCallAbandoned("not sent: nobody waits for this call's answer any more")
    acquiring = asyncio.ensure_future(limiter.acquire(project_id))
    lapsed = asyncio.ensure_future(lease.lapsed.wait())
    try:
        await asyncio.wait({acquiring, lapsed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lapsed.cancel()
        if not acquiring.done():
            acquiring.cancel()  # the limiter forgets the waiter, or releases a grant made just now
            with suppress(asyncio.CancelledError):
                await acquiring
    if acquiring.cancelled():
        raise ApiCallAbandoned("not sent: nobody waits for this call's answer any more (it waited for the limiter)")
    return acquiring.result()
