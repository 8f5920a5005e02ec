"""A local fake of the Huawei Cloud Workspace API (batch-create snapshots and jobs) on aiohttp.web.

::

    sim = Simulator(SimConfig(tokens=frozenset({"t"})))
    await sim.start(host="127.0.0.1", port=0)   # sim.url -> "http://127.0.0.1:PORT"
    ...                                         # change sim.config fields at any time
    sim.stats(); sim.reset_stats()
    await sim.stop()

What it answers, in the order the real gateway and service decide:

1. Authentication (API gateway): ``X-Auth-Token`` in ``config.tokens``, else an SDK-HMAC-SHA256
   ``Authorization`` for an AK in ``config.credentials`` (exact body bytes, real Host, raw path and query,
   X-Sdk-Date within 15 min), else ``allow_anonymous``; otherwise 401 in the gateway's body shape
   ``{error_code, error_msg, request_id}`` (APIG.1002 no credentials, APIG.0301 bad ones).
2. Flow control, batch-create only, per user (the token or the AK): 429 APIG.0308 with Huawei's
   "policy user over ratelimit" message. Job queries are not limited.
3. Injected faults (batch-create only): ``error_429_ratio`` 429 APIG.0308 whatever the limits,
   ``html_error_ratio`` 502 text/html pages, ``error_5xx_ratio`` 500 WKS.0005 / 502 / 503 JSON. No job is
   created. (``latency_jitter_s`` and ``stall_ratio``/``stall_s`` delay answers, and ``drop_after_create_ratio``
   creates the job and then closes the connection unanswered: see :class:`SimConfig`.)
4. The service: 400 WKS.0001 for a body the real API refuses, 404 WKS.0202 for an unknown desktop, 409
   WKS.0110 for a busy one (for ``busy_for_s`` after the first call that found it busy, or for ever), else 200
   ``{"job_id"}``. Service errors use ``{error_code, error_msg, error_detail, encoded_authorization_message}``;
   404/409 name the first desktop at fault in ``error_msg`` and ``error_detail`` unless ``name_culprits`` is off
   (then the batch has to be bisected to find it).

Reads: ``GET workspace-jobs/{job_id}`` and ``GET workspace-sub-jobs`` (the SDK's ``ShowJobResponse`` and
``ListItaSubJobsResponse``, see :mod:`.service`), ``GET snapshots`` (``ListDesktopSnapshotResponse``, see
:mod:`.snapshots`); 400 WKS.0001 for a query the API refuses. They are not flow-controlled.

Every response, errors and unknown paths included, carries an ``X-Request-Id`` (uuid hex). ``/_sim/stats``
(GET), ``/_sim/reset``, ``/_sim/throttle?seconds=S`` (POST: every batch-create answered 429 for S seconds) and
``/_sim/tokens?accept=T1,T2`` (POST: the IAM tokens accepted from now on) need no credentials. Error codes and
messages follow Huawei's published ones where known; the 409 code (WKS.0110) and the 5xx/401 wordings are close
imitations, not documented values.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from snapworker.simulator.cli import add_arguments, config_from_args
from snapworker.simulator.service import InvalidBody, JobStore, parse_batch_create
from snapworker.simulator.snapshots import InvalidQuery, SnapshotIndex, parse_listing_query
from snapworker.simulator.state import FlowLimiter, SimConfig, SimStats, retry_after_header
from snapworker.simulator.verify import SignatureError, verify_signature

__all__ = ["SimConfig", "Simulator", "add_arguments", "config_from_args", "run"]

log = logging.getLogger("snapworker.simulator")

_BUSY_CODE = "WKS.0110"
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


# The id of the request being handled. A context variable rather than request storage: every request is
# handled in its own context (the middleware sets it first), and it works on every aiohttp 3.x.
_request_id: ContextVar[str] = ContextVar("snapworker_sim_request_id")


def _service_error(status: int, code: str, message: str, detail: str | None = None) -> web.Response:
    """An error in the Workspace service's shape."""
    body = {"error_code": code, "error_msg": message, "error_detail": detail, "encoded_authorization_message": None}
    return web.json_response(body, status=status)


def _gateway_error(status: int, code: str, message: str) -> web.Response:
    """An error in the API gateway's shape (APIG.*), which carries the request id in the body too."""
    body = {"error_code": code, "error_msg": message, "request_id": _request_id.get()}
    return web.json_response(body, status=status)


@web.middleware
async def _gateway(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every answer an X-Request-Id, and unknown APIs the gateway's 404."""
    request_id = uuid.uuid4().hex
    _request_id.set(request_id)
    try:
        response = await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        message = "The API does not exist or has not been published in an environment."
        response = _gateway_error(404, "APIG.0101", message)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = request_id
        raise
    response.headers["X-Request-Id"] = request_id
    return response


class Simulator:
    """The fake API server. One instance serves one ``start()``/``stop()`` cycle."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self._rng = random.Random(self.config.seed)
        self._stats = SimStats()
        self._limiter = FlowLimiter()
        self._jobs = JobStore()
        self._busy_since: dict[str, float] = {}  # monotonic time a busy desktop was first refused
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.app = web.Application(middlewares=[_gateway])
        self.app.router.add_post("/v2/{project_id}/snapshots/batch-create", self._batch_create)
        self.app.router.add_get("/v2/{project_id}/workspace-jobs/{job_id}", self._get_job)
        self.app.router.add_get("/v2/{project_id}/workspace-sub-jobs", self._list_sub_jobs)
        self.snapshots = SnapshotIndex()
        self.app.router.add_get("/v2/{project_id}/snapshots", self._list_snapshots)
        self.app.router.add_get("/_sim/stats", self._get_stats)
        self.app.router.add_post("/_sim/reset", self._reset)
        self.app.router.add_post("/_sim/throttle", self._throttle)
        self.app.router.add_post("/_sim/tokens", self._set_tokens)
        self._throttled_until = 0.0  # until then (monotonic) every batch-create is answered 429

    # ----------------------------------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = a free port); :attr:`url` is valid afterwards."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        # A short shutdown_timeout: stop() should not wait a minute for a client holding a connection.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening and close connections. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, the API_URL to give a client."""
        if self._url is None:
            raise RuntimeError("simulator not started")
        return self._url

    def stats(self) -> dict[str, Any]:
        """The same document as ``GET /_sim/stats``."""
        return self._stats.to_dict()

    def reset_stats(self) -> None:
        """Zero the statistics (jobs and flow-control windows are kept)."""
        self._stats = SimStats()

    def job_desktops(self, job_id: str) -> tuple[str, ...] | None:
        """The desktop IDs a job covers, or None if no such job is kept."""
        job = self._jobs.by_id(job_id)
        return job.desktop_ids if job is not None else None

    # ----------------------------------------------------------------------------------------- handlers

    def _authenticate(self, request: web.Request, body: bytes) -> str | web.Response:
        """The user (for flow control) the request authenticates as, or the 401 to answer."""
        config = self.config
        token = request.headers.get("X-Auth-Token")
        if token is not None:
            if token in config.tokens:
                return f"token:{token}"
            return _gateway_error(401, "APIG.0301", "Incorrect IAM authentication information: decrypt token fail")
        if "Authorization" in request.headers:
            try:
                access_key = verify_signature(
                    request.method,
                    request.raw_path,
                    request.headers,
                    body,
                    secret_key_for=config.credentials.get,
                    now=datetime.now(UTC),
                )
            except SignatureError as exc:
                if exc.reason == "unknown_access_key":
                    detail = f"Get secretKey failed,{exc}"
                else:
                    detail = f"verify aksk signature fail, {exc}"
                return _gateway_error(401, "APIG.0301", f"Incorrect IAM authentication information: {detail}")
            return f"ak:{access_key}"
        if config.allow_anonymous:
            return "anonymous"
        return _gateway_error(401, "APIG.1002", "Incorrect IAM authentication information: x-auth-token not found")

    async def _answer(self, response: web.Response, *, may_stall: bool = False) -> web.Response:
        config = self.config
        delay = config.latency_s
        if config.latency_jitter_s > 0:
            delay += self._rng.uniform(0.0, config.latency_jitter_s)
        if may_stall and config.stall_ratio > 0 and self._rng.random() < config.stall_ratio:
            delay += config.stall_s
        if delay > 0:
            await asyncio.sleep(delay)
        return response

    async def _batch_create(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        stats = self._stats
        stats.record_arrival(now)
        body = await request.read()
        response = self._decide_batch_create(request, body, now)
        stats.record_status(response.status, now)
        # 200 is only ever answered with a new job. The roll is made only then, so this fault leaves the draws
        # of the others as they were.
        ratio = self.config.drop_after_create_ratio
        if response.status == 200 and ratio > 0 and self._rng.random() < ratio:
            stats.dropped_answers += 1
            return self._drop_connection(request, response)
        return await self._answer(response, may_stall=True)

    @staticmethod
    def _drop_connection(request: web.Request, response: web.Response) -> web.Response:
        """Close the connection before anything is written; returns the answer that will never be sent.

        aiohttp then fails to write it to the closing transport, takes that for a client gone away (logged at
        debug level only, no traceback) and goes on serving other connections.
        """
        if request.transport is not None:
            request.transport.close()
        return response

    def _decide_batch_create(self, request: web.Request, body: bytes, now: float) -> web.Response:
        config = self.config
        user = self._authenticate(request, body)
        if isinstance(user, web.Response):
            return user
        refused = self._limiter.admit(user, now, config.rate_per_minute, config.rate_per_second)
        if refused is not None:
            message = (
                "The throttling threshold has been reached: policy user over ratelimit, "
                f"limit:{refused.limit}, time:1 {refused.period}"
            )
            response = _gateway_error(429, "APIG.0308", message)
            if config.send_retry_after:
                response.headers["Retry-After"] = retry_after_header(refused.retry_after_s)
            return response
        if now < self._throttled_until or (config.error_429_ratio > 0 and self._rng.random() < config.error_429_ratio):
            return _gateway_error(
                429, "APIG.0308", "The throttling threshold has been reached: policy ip over ratelimit"
            )
        if config.html_error_ratio > 0 or config.error_5xx_ratio > 0:
            fault = self._injected_fault(request)
            if fault is not None:
                return fault
        try:
            desktop_ids = parse_batch_create(body)
        except InvalidBody as exc:
            return _service_error(400, "WKS.0001", str(exc), exc.field)
        if config.unknown_desktops:
            unknown = next((d for d in desktop_ids if d in config.unknown_desktops), None)
            if unknown is not None:
                return self._desktop_error(404, "WKS.0202", "The desktop does not exist", unknown)
        if config.busy_desktops:
            busy = next((d for d in desktop_ids if self._busy(d, now)), None)
            if busy is not None:
                return self._desktop_error(
                    409, _BUSY_CODE, "The desktop is being operated by another task, try again later", busy
                )
        job = self._jobs.create(
            request.match_info["project_id"],
            desktop_ids,
            failing=config.failing_desktops,
            now=now,
            wall_now=datetime.now(UTC),
            duration_s=config.job_duration_s,
            max_jobs=config.max_jobs,
        )
        again = self._stats.record_job(job.desktop_ids)
        if again:  # the crash tests' ground truth, said where it happens: which calls snapshotted a desktop twice
            project = job.project_id
            earlier = {d: [s["job_id"] for s in self.snapshots.of_desktop(project, d)] for d in again[:5]}
            log.warning(
                "job %s of project %s snapshots desktops again: %s (earlier jobs: %s; body %s)",
                job.id,
                project,
                again[:5],
                earlier,
                body[:300],
            )
        self.snapshots.record(job, body)
        return web.json_response({"job_id": job.id})

    def _busy(self, desktop_id: str, now: float) -> bool:
        """A busy desktop stays busy ``busy_for_s`` after the first call that found it so (for ever if None)."""
        if desktop_id not in self.config.busy_desktops:
            return False
        since = self._busy_since.setdefault(desktop_id, now)
        busy_for_s = self.config.busy_for_s
        return busy_for_s is None or now - since < busy_for_s

    def _desktop_error(self, status: int, code: str, message: str, desktop_id: str) -> web.Response:
        """A service error caused by one desktop: naming it, unless ``name_culprits`` is off."""
        if self.config.name_culprits:
            return _service_error(status, code, f"{message}: {desktop_id}", desktop_id)
        return _service_error(status, code, f"{message}.")

    def _injected_fault(self, request: web.Request) -> web.Response | None:
        config = self.config
        roll = self._rng.random()
        if roll < config.html_error_ratio:
            return web.Response(status=502, text=_BAD_GATEWAY_HTML, content_type="text/html")
        if roll >= config.html_error_ratio + config.error_5xx_ratio:
            return None
        kind = self._rng.randrange(3)
        if kind == 0:
            return _service_error(500, "WKS.0005", "Failed to call the ECS API.", "internal error")
        status = 502 if kind == 1 else 503
        return _gateway_error(status, "APIG.0201", "Backend unavailable")

    async def _get_job(self, request: web.Request) -> web.Response:
        self._stats.record_read(time.monotonic())
        self._stats.job_queries += 1
        user = self._authenticate(request, await request.read())
        if isinstance(user, web.Response):
            return await self._answer(user)
        project_id, job_id = request.match_info["project_id"], request.match_info["job_id"]
        job = self._jobs.get(project_id, job_id)
        if job is None:
            response = _service_error(404, "WKS.0202", f"The job does not exist: {job_id}", job_id)
        else:
            response = web.json_response(job.to_dict(time.monotonic(), inline=self.config.sub_jobs_inline))
        return await self._answer(response)

    async def _list_snapshots(self, request: web.Request) -> web.Response:
        """``GET snapshots`` with the SDK's ``ListDesktopSnapshotRequest`` query (lists as repeated keys) ->
        ``{"desktop_snapshots": [...], "total_count"}`` (see :mod:`.snapshots`); 400 WKS.0001 for a bad query."""
        self._stats.record_read(time.monotonic())
        self._stats.snapshot_queries += 1
        user = self._authenticate(request, await request.read())
        if isinstance(user, web.Response):
            return await self._answer(user)
        try:
            query = parse_listing_query(request.query)
        except InvalidQuery as exc:
            return await self._answer(_service_error(400, "WKS.0001", str(exc), exc.field))
        listing = self.snapshots.listing(request.match_info["project_id"], query, time.monotonic())
        return await self._answer(web.json_response(listing))

    async def _list_sub_jobs(self, request: web.Request) -> web.Response:
        """``GET workspace-sub-jobs?job_id=&limit=&offset=`` -> ``{"total_count", "jobs": [sub-job, ...]}``."""
        self._stats.record_read(time.monotonic())
        self._stats.sub_job_queries += 1
        user = self._authenticate(request, await request.read())
        if isinstance(user, web.Response):
            return await self._answer(user)
        query = request.query
        job_id = query.get("job_id", "")
        try:
            limit, offset = int(query.get("limit", "10")), int(query.get("offset", "0"))
        except ValueError:
            limit, offset = -1, -1
        job = self._jobs.get(request.match_info["project_id"], job_id)
        if not 1 <= limit <= 1000 or offset < 0:
            response = _service_error(400, "WKS.0001", "limit must be 1..1000 and offset at least 0", "limit")
        elif job is None:
            response = _service_error(404, "WKS.0202", f"The job does not exist: {job_id}", job_id)
        else:
            sub_jobs = job.sub_jobs(time.monotonic(), offset, limit)
            response = web.json_response({"total_count": len(job.desktop_ids), "jobs": sub_jobs})
        return await self._answer(response)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats())

    async def _throttle(self, request: web.Request) -> web.Response:
        """``POST /_sim/throttle?seconds=S``: answer every batch-create 429 for the next S seconds (a throttling
        burst: the callers' limiters pause, and their batches wait)."""
        seconds = float(request.query.get("seconds", "10"))
        self._throttled_until = time.monotonic() + seconds
        return web.json_response({"throttled_for_s": seconds})

    async def _set_tokens(self, request: web.Request) -> web.Response:
        """``POST /_sim/tokens?accept=T1,T2``: accept only these IAM tokens from now on (an expiry, a rotation)."""
        accept = request.query.get("accept", "")
        self.config.tokens = frozenset(t for t in accept.split(",") if t)
        return web.json_response({"tokens": len(self.config.tokens)})


# --------------------------------------------------------------------------------------------------- CLI


async def _serve(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sim = Simulator(config)
    await sim.start(host=host, port=port)
    try:
        auth = "anonymous allowed" if config.allow_anonymous else "credentials required"
        print(f"simulator listening on {sim.url} ({auth})", flush=True)
        await stop.wait()
    finally:
        await sim.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the process exit code (0, or 2 for bad options)."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"snapworker simulate: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(config, args.host, args.port))
    return 0
