"""The Workspace API client: batch-create and job queries over one aiohttp session, retried and rate limited.

aiohttp stops here: its exceptions become :mod:`snapworker.errors` classes (``raise ... from exc``) and its
responses become parsed values. Authentication is an IAM token (``X-Auth-Token``) or an AK/SK signature made
afresh for every try (new ``X-Sdk-Date``) over the exact body bytes sent.

Retries (rules in :class:`~snapworker.cloud.retry.RetryPolicy`): a try starts when the rate limiter grants
it (the first try may bring a grant the caller already holds: the worker asks for a call before it cuts the
batch); waiting for the limiter is never a try. The time budget starts when the first try is granted. A throttled
try (429 / APIG.0308) is not a retry either: it cuts and pauses the limiter and waits for it, spending neither
tries nor the time budget, until the caller's ``deadline`` (or, without one, the time budget) would pass. A POST
whose response timed out is retried only with RETRY_ON_RESPONSE_TIMEOUT; a success then has
``possible_duplicate=True`` and a final failure has ``maybe_created=True``. Job queries (GET) always retry
timeouts; they go through the ``limiter`` their caller gives (reads have their own, higher limit: see
:mod:`snapworker.cloud.jobs`), never through batch-create's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
import backoff
from yarl import URL

from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.cloud.responses import error_from_response, parse_created_job, parse_job
from snapworker.cloud.retry import RetryPolicy
from snapworker.cloud.signing import sdk_date_now, sign_request
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.keys import MergeKey
from snapworker.errors import ApiDeadlineExceeded, ApiError, ApiResponseTimeout, ApiThrottled, ApiTransportError
from snapworker.settings import Settings

__all__ = ["ClientObserver", "WorkspaceClient", "batch_create_body"]

log = logging.getLogger("snapworker.cloud")

MAX_DESKTOPS_PER_CALL = 100


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


def batch_create_body(key: MergeKey, desktop_ids: Sequence[str]) -> bytes:
    """The exact JSON bytes of a batch-create call; fields (and snapshot info fields) that are None left out."""
    if not 1 <= len(desktop_ids) <= MAX_DESKTOPS_PER_CALL:
        raise ValueError(f"batch-create takes 1 to {MAX_DESKTOPS_PER_CALL} desktops, got {len(desktop_ids)}")
    body: dict[str, Any] = {"desktop_ids": list(desktop_ids)}
    if key.disk_type is not None:
        body["disk_type"] = key.disk_type
    for name, info in (
        ("system_disk_snapshot", key.system_disk_snapshot),
        ("data_disk_snapshot", key.data_disk_snapshot),
    ):
        fields = info.model_dump(exclude_none=True) if info is not None else {}
        if fields:  # an info with nothing set says nothing: leave it out
            body[name] = fields
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WorkspaceClient:
    """One credential's connection to the Workspace API. Use as ``async with WorkspaceClient(settings) as c:``.

    ``limiter`` defaults to one built from ``settings``; share one limiter between clients of one credential.
    A given ``session`` is used as is and not closed; otherwise the client makes (and closes) its own.
    ``clock``/``sleep``/``jitter``/``sdk_date`` are for tests.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: Limiter | None = None,
        session: aiohttp.ClientSession | None = None,
        observer: ClientObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[float], float] = backoff.full_jitter,
        sdk_date: Callable[[], str] = sdk_date_now,
    ) -> None:
        self._settings = settings
        self._base_url = settings.api_url.rstrip("/")
        self._limiter: Limiter = limiter if limiter is not None else RateLimiter.from_settings(settings)
        self._session = session
        self._owns_session = session is None
        self._observer = observer
        self._policy = RetryPolicy.from_settings(settings)
        self._clock, self._sleep, self._jitter, self._sdk_date = clock, sleep, jitter, sdk_date
        self._proxy = settings.api_proxy.get_secret_value() if settings.api_proxy is not None else None

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    # -- lifecycle
    async def __aenter__(self) -> WorkspaceClient:
        self._get_session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        # Made lazily: aiohttp binds a session to the running event loop.
        if self._session is None:
            s = self._settings
            connector = aiohttp.TCPConnector(
                # batch-create calls are capped at MAX_CONCURRENCY by the limiter; the rest is for job queries.
                limit=2 * s.max_concurrency,
                # verify certificates and host names; API_CA_FILE: against that bundle (a corporate CA)
                ssl=ssl.create_default_context(cafile=str(Path(s.api_ca_file).expanduser())) if s.api_ca_file else True,
            )
            timeout = aiohttp.ClientTimeout(
                # connect bounds connecting (ConnectionTimeoutError: nothing was sent); sock_read bounds the
                # wait for the answer; total bounds the whole try.
                total=s.connect_timeout_s + s.read_timeout_s,
                connect=s.connect_timeout_s,
                sock_connect=s.connect_timeout_s,
                sock_read=s.read_timeout_s,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    # -- API
    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
    ) -> CreatedJob:
        """Create snapshots of ``desktop_ids`` (1..100) with ``key``'s settings; retried as the module says.

        ``grant``: a call the limiter already granted for this batch (the first try uses it; released here).
        ``deadline`` (this client's clock): throttled tries are repeated until then, not counted as retries.
        Raises an :class:`~snapworker.errors.ApiError` subclass when no job was created (as far as we know).
        """
        try:
            body = batch_create_body(key, desktop_ids)
        except BaseException:
            if grant is not None:
                self._limiter.release()  # the granted call is not made: its place goes to the next
            raise
        path = f"/v2/{quote(key.project_id, safe='')}/snapshots/batch-create"
        response, possible_duplicate = await self._call(
            "POST", path, key.project_id, body, idempotent=False, limited=True, grant=grant, deadline=deadline
        )
        job_id = parse_created_job(response.status, response.headers, response.body)
        return CreatedJob(job_id, response.headers.get("X-Request-Id"), possible_duplicate)

    async def get_job(self, project_id: str, job_id: str, *, limiter: Limiter | None = None) -> dict[str, Any]:
        """The job document of ``GET /v2/{project_id}/workspace-jobs/{job_id}`` as sent by the API.

        ``limiter``: the read budget each try waits for (None: not limited; never batch-create's limiter)."""
        path = f"/v2/{quote(project_id, safe='')}/workspace-jobs/{quote(job_id, safe='')}"
        return await self.get_json(path, project_id, limiter=limiter)

    async def get_json(self, path: str, project_id: str, *, limiter: Limiter | None = None) -> dict[str, Any]:
        """A GET of ``path`` (already quoted, with its query) whose 2xx answer is a JSON object; retried like
        every call, each try through ``limiter`` when given."""
        response, _ = await self._call(
            "GET", path, project_id, b"", idempotent=True, limited=limiter is not None, limiter=limiter
        )
        return parse_job(response.status, response.headers, response.body)

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
    ) -> tuple[_Response, bool]:
        """One call with its retries: the 2xx response, and whether an earlier try's response timed out.

        A throttled try is not a retry: it spends neither ``max_tries`` nor the time budget (the limiter's
        pause is the wait), and is repeated until ``deadline``. Dramatiq's rate limits burn retries on
        throttling, so a worker set above the API's real limit fails requests; this one only waits.
        """
        url = self._base_url + path
        limiter = limiter if limiter is not None else self._limiter
        delays = self._policy.backoff_delays()
        started: float | None = None
        attempt = 0
        excused_s = 0.0  # time spent waiting out throttles: not part of the retry time budget
        throttled_at: float | None = None
        timed_out_before = False
        while True:
            async with self._try_slot(limiter, project_id, limited, grant, deadline) as slot:
                grant = None  # only the first try uses a grant made before the call
                now = self._clock()
                if started is None:
                    started = now
                if throttled_at is not None:
                    excused_s += now - throttled_at
                    throttled_at = None
                try:
                    return await self._try_once(method, url, project_id, body), timed_out_before
                except ApiThrottled as exc:
                    if slot is not None:
                        limiter.on_throttle(exc.retry_after_s, sent_at=slot.granted_at)
                    if self._observer is not None:
                        self._observer.on_throttle()
                    error: ApiError = exc
                except ApiError as exc:
                    error = exc
            # Outside the slot: while this call backs off, its place goes to another.
            if timed_out_before and not idempotent:
                error.maybe_created = True  # an earlier try may have created the job
            if isinstance(error, ApiThrottled) and limited:
                # Without a request deadline, the retry time budget is the deadline for throttled tries too.
                until = deadline if deadline is not None else started + self._policy.max_time_s
                resume_at = self._clock() + (error.retry_after_s or 0.0)
                if resume_at >= until:
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
            delay = self._policy.next_delay(
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
            timed_out_before = timed_out_before or isinstance(error, ApiResponseTimeout)
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
        self, limiter: Limiter, project_id: str, limited: bool, grant: Grant | None, deadline: float | None
    ) -> AsyncIterator[Grant | None]:
        """The limiter's permission for one try: ``grant`` if given, else a new one, waited for until
        ``deadline`` (then the call fails as throttled: it never got its turn)."""
        if not limited:
            yield None
            return
        if grant is None:
            timeout = None if deadline is None else max(deadline - self._clock(), 0.0)
            try:
                grant = await asyncio.wait_for(limiter.acquire(project_id), timeout)
            except TimeoutError as exc:
                raise ApiDeadlineExceeded(
                    "the request's deadline (REQUEST_DEADLINE_S) passed while it waited for the rate limiter"
                ) from exc
        try:
            yield grant
        finally:
            limiter.release()

    # -- one try
    async def _try_once(self, method: str, url: str, project_id: str, body: bytes) -> _Response:
        """Send once; the 2xx response, or raise the typed error."""
        headers = self._headers(method, url, project_id, body)
        started = self._clock()
        try:
            async with self._get_session().request(
                method,
                URL(url, encoded=True),  # send the path exactly as signed
                data=body or None,
                headers=headers,
                allow_redirects=False,  # a redirect would resend a signed POST elsewhere
                proxy=self._proxy,
            ) as resp:
                data = await resp.read()
                status, reason, resp_headers = resp.status, resp.reason, resp.headers
        except aiohttp.ConnectionTimeoutError as exc:  # before TimeoutError: it is one, but nothing was sent
            self._observe("transport", started)
            raise ApiTransportError(f"connecting to the Workspace API timed out: {exc}") from exc
        except TimeoutError as exc:
            self._observe("timeout", started)
            raise ApiResponseTimeout(
                f"no response from the Workspace API within {self._settings.read_timeout_s:g} s "
                f"({method} {URL(url).path}); the request was sent"
            ) from exc
        except aiohttp.ClientError as exc:
            self._observe("transport", started)
            raise ApiTransportError(f"cannot reach the Workspace API: {type(exc).__name__}: {exc}") from exc
        self._observe(f"{status // 100}xx", started)
        if not 200 <= status < 300:
            raise error_from_response(status, reason, resp_headers, data)
        return _Response(status, resp_headers, data)

    def _headers(self, method: str, url: str, project_id: str, body: bytes) -> dict[str, str]:
        s = self._settings
        headers = {"Content-Type": "application/json"}
        if s.access_key is not None and s.secret_key is not None:
            headers["X-Project-Id"] = project_id
            if s.security_token is not None:
                # temporary credentials: the token rides in a header that is signed with the rest, as the SDK does
                headers["X-Security-Token"] = s.security_token.get_secret_value()
            headers |= sign_request(
                method,
                url,
                headers,
                body,
                access_key=s.access_key.get_secret_value(),
                secret_key=s.secret_key.get_secret_value(),
                sdk_date=self._sdk_date(),  # every try signed afresh: the gateway refuses a stale date
            )
        elif s.auth_token is not None:
            headers["X-Auth-Token"] = s.auth_token.get_secret_value()
        return headers

    def _observe(self, status_class: str, started: float) -> None:
        if self._observer is not None:
            self._observer.on_call(status_class, self._clock() - started)
