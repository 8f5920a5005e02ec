"""WorkspaceClient over real loopback HTTP: the simulator, or a scripted server for answers it cannot give.

Backoff sleeps are injected (recorded, never slept); the clock moves by what was "slept".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from snapworker.cloud.body import batch_create_body
from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import RateLimiter
from snapworker.contract.models import DiskSnapshotInfo
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.keys import MergeKey
from snapworker.errors import (
    ApiAuthError,
    ApiClientError,
    ApiResponseLost,
    ApiResponseTimeout,
    ApiServerError,
    ApiThrottled,
    ApiTransportError,
)
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.simulator.verify import verify_signature
from tests.conftest import SIM_TOKEN
from tests.helpers import unused_loopback_port

PROJECT = "0123456789abcdef0123456789abcdef"
KEY = MergeKey(PROJECT, "SYSTEM_DISK", DiskSnapshotInfo(name="nightly"), None)
AK, SK = "AKTESTAK000000000000", "SKtestsecret00000000000000000000000000000"


class InstantTime:
    """Client sleeps are recorded and move the clock at once; the limiter's own sleeps only move it (unlike
    test_limiter's FakeTime, nothing here waits for the test to advance the clock)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    async def limiter_sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def settings_for(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_url": url,
        "auth_token": SecretStr(SIM_TOKEN),
        "rate_limit": 1000.0,
        "rate_burst": 100,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        "retry_max_tries": 5,
        "retry_max_time_s": 300.0,
    } | overrides
    return Settings(**values)


def make_client(settings: Settings, time: InstantTime, **kwargs: Any) -> WorkspaceClient:
    """A client on fake time whose backoff is not jittered (the recorded sleeps are exact)."""
    limiter = RateLimiter.from_settings(settings, clock=time.clock, sleep=time.limiter_sleep)
    return WorkspaceClient(settings, limiter=limiter, clock=time.clock, sleep=time.sleep, jitter=lambda v: v, **kwargs)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop: bool = False  # the request is read, then the connection closed without an answer
    short_body: bool = False  # the answer's headers promise more body than comes before the connection closes


class ScriptedServer:
    """Answers each request with the next scripted reply (the last one repeats) and records the requests."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[web.Request, bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request, body))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.drop:
            assert request.transport is not None
            request.transport.close()
            raise asyncio.CancelledError  # aiohttp.web ends the handler quietly on a lost connection
        if reply.short_body:
            response = web.StreamResponse(status=reply.status, headers=reply.headers)
            response.content_length = len(reply.body) + 100
            await response.prepare(request)
            await response.write(reply.body)
            assert request.transport is not None
            request.transport.close()
            return response
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer(Reply(200, b'{"job_id": "job-1"}'))
    app = web.Application()

    async def route(request: web.Request) -> web.StreamResponse:
        return await server.handle(request)  # looked up per request: a test may replace the handler

    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


def job_json(job_id: str = "job-1") -> bytes:
    return f'{{"job_id": "{job_id}"}}'.encode()


# -- body and URL


def test_the_body_leaves_out_none_fields() -> None:
    key = MergeKey(PROJECT, None, DiskSnapshotInfo(name="n", description=None), None)
    assert batch_create_body(key, ["d1", "d2"]) == b'{"desktop_ids":["d1","d2"],"system_disk_snapshot":{"name":"n"}}'


def test_the_body_keeps_every_field_that_is_set() -> None:
    key = MergeKey(PROJECT, "ALL", DiskSnapshotInfo(name="s", description="x"), DiskSnapshotInfo(name="d"))
    assert batch_create_body(key, ["d1"]) == (
        b'{"desktop_ids":["d1"],"disk_type":"ALL","system_disk_snapshot":{"name":"s","description":"x"},'
        b'"data_disk_snapshot":{"name":"d"}}'
    )


def test_the_marker_becomes_the_description_only_where_the_request_gave_none() -> None:
    key = MergeKey(PROJECT, "ALL", DiskSnapshotInfo(name="s", description="mine"), None)
    assert batch_create_body(key, ["d1"], marker="snapworker:a1") == (
        b'{"desktop_ids":["d1"],"disk_type":"ALL","system_disk_snapshot":{"name":"s","description":"mine"},'
        b'"data_disk_snapshot":{"description":"snapworker:a1"}}'
    )


@pytest.mark.parametrize("count", [0, 101])
def test_the_body_refuses_zero_or_more_than_100_desktops(count: int) -> None:
    with pytest.raises(ValueError, match="1 to 100"):
        batch_create_body(KEY, [f"d{i}" for i in range(count)])


async def test_batch_create_returns_the_created_job(simulator: Simulator) -> None:
    async with make_client(settings_for(simulator.url), InstantTime()) as client:
        job = await client.batch_create(KEY, ["d-0001", "d-0002"])
    assert isinstance(job, CreatedJob)
    assert simulator.job_desktops(job.job_id) == ("d-0001", "d-0002")
    assert job.api_request_id is not None


async def test_batch_create_posts_json_to_the_project_url(scripted: ScriptedServer) -> None:
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        await client.batch_create(KEY, ["d-1"])
    request, body = scripted.requests[0]
    assert (request.method, request.raw_path) == ("POST", f"/v2/{PROJECT}/snapshots/batch-create")
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Auth-Token"] == SIM_TOKEN
    assert body == batch_create_body(KEY, ["d-1"])


# -- authentication


async def test_a_wrong_token_is_an_auth_error_and_not_retried(simulator: Simulator) -> None:
    time = InstantTime()
    async with make_client(settings_for(simulator.url, auth_token=SecretStr("wrong")), time) as client:
        with pytest.raises(ApiAuthError) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert (caught.value.http_status, caught.value.error_code) == (401, "APIG.0301")
    assert simulator.stats()["calls_total"] == 1
    assert time.sleeps == []


async def test_an_aksk_signed_call_is_accepted(simulator: Simulator) -> None:
    simulator.config.credentials = {AK: SK}
    settings = settings_for(simulator.url, auth_token=None, access_key=SecretStr(AK), secret_key=SecretStr(SK))
    async with make_client(settings, InstantTime()) as client:
        job = await client.batch_create(KEY, ["d-1"])
    assert simulator.job_desktops(job.job_id) == ("d-1",)


async def test_a_wrong_secret_key_is_an_auth_error(simulator: Simulator) -> None:
    simulator.config.credentials = {AK: SK}
    settings = settings_for(
        simulator.url, auth_token=None, access_key=SecretStr(AK), secret_key=SecretStr("not-the-sk")
    )
    async with make_client(settings, InstantTime()) as client:
        with pytest.raises(ApiAuthError, match="signature"):
            await client.batch_create(KEY, ["d-1"])


async def test_every_try_is_signed_afresh(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503), Reply(200, job_json())]
    dates = iter(["20240101T120000Z", "20240101T120001Z"])
    settings = settings_for(scripted.url, auth_token=None, access_key=SecretStr(AK), secret_key=SecretStr(SK))
    async with make_client(settings, InstantTime(), sdk_date=lambda: next(dates)) as client:
        await client.batch_create(KEY, ["d-1"])
    seen = [request.headers["X-Sdk-Date"] for request, _ in scripted.requests]
    assert seen == ["20240101T120000Z", "20240101T120001Z"]
    for request, body in scripted.requests:
        assert request.headers["X-Project-Id"] == PROJECT
        assert "X-Auth-Token" not in request.headers
        verify_signature(
            "POST",
            request.raw_path,
            request.headers,
            body,
            secret_key_for={AK: SK}.get,
            now=datetime(2024, 1, 1, 12, tzinfo=UTC),
        )


# -- permanent errors


async def test_a_400_is_permanent_and_not_retried(simulator: Simulator) -> None:
    time = InstantTime()
    async with make_client(settings_for(simulator.url), time) as client:
        with pytest.raises(ApiClientError) as caught:
            await client.batch_create(KEY, ["x" * 37])  # the API takes IDs of at most 36 characters
    error = caught.value
    assert (error.http_status, error.error_code, error.error_detail) == (400, "WKS.0001", "desktop_ids")
    assert error.api_request_id is not None
    assert not error.retryable
    assert simulator.stats()["calls_total"] == 1
    assert time.sleeps == []


async def test_a_403_is_an_auth_error(scripted: ScriptedServer) -> None:
    body = b'{"error_code": "WKS.00010099", "error_msg": "service disabled", "encoded_authorization_message": "x"}'
    scripted.replies = [Reply(403, body, {"X-Request-Id": "rid-403"})]
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        with pytest.raises(ApiAuthError) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert (caught.value.error_code, str(caught.value), caught.value.api_request_id) == (
        "WKS.00010099",
        "service disabled",
        "rid-403",
    )
    assert len(scripted.requests) == 1


async def test_an_unknown_desktop_is_a_404_client_error(simulator: Simulator) -> None:
    simulator.config.unknown_desktops = frozenset({"gone"})
    async with make_client(settings_for(simulator.url), InstantTime()) as client:
        with pytest.raises(ApiClientError) as caught:
            await client.batch_create(KEY, ["d-1", "gone"])
    assert (caught.value.http_status, caught.value.error_code, caught.value.error_detail) == (404, "WKS.0202", "gone")
    assert simulator.stats()["calls_total"] == 1


async def test_a_busy_desktop_is_a_409_client_error(simulator: Simulator) -> None:
    simulator.config.busy_desktops = frozenset({"busy"})
    async with make_client(settings_for(simulator.url), InstantTime()) as client:
        with pytest.raises(ApiClientError) as caught:
            await client.batch_create(KEY, ["busy"])
    assert caught.value.http_status == 409
    assert simulator.stats()["calls_total"] == 1


# -- retried errors


async def test_a_429_waits_in_the_limiter_then_succeeds(simulator: Simulator) -> None:
    simulator.config.rate_per_minute = 1
    time = InstantTime()

    async def pause_then_lift_the_limit(seconds: float) -> None:
        await time.limiter_sleep(seconds)
        simulator.config.rate_per_minute = None

    settings = settings_for(simulator.url)
    limiter = RateLimiter.from_settings(settings, clock=time.clock, sleep=pause_then_lift_the_limit)
    client = WorkspaceClient(settings, limiter=limiter, clock=time.clock, sleep=time.sleep)
    async with client:
        await client.batch_create(KEY, ["d-1"])
        job = await client.batch_create(KEY, ["d-2"])
    assert simulator.job_desktops(job.job_id) == ("d-2",)
    assert simulator.stats()["calls_by_status"] == {"200": 2, "429": 1}
    assert time.sleeps == []  # the limiter's pause is the wait: no backoff of the client's own
    assert limiter.throttles_total == 1
    assert limiter.rate == settings.rate_limit / 2


async def test_throttling_never_spends_the_retry_budget(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429)] * 5 + [Reply(200, job_json())]
    async with make_client(settings_for(scripted.url, retry_max_tries=1), InstantTime()) as client:
        job = await client.batch_create(KEY, ["d-1"])
    assert job.job_id == "job-1"
    assert len(scripted.requests) == 6


async def test_a_throttled_call_fails_only_when_its_deadline_passes(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429)]
    time = InstantTime()
    start = time.now
    async with make_client(settings_for(scripted.url), time) as client:
        with pytest.raises(ApiThrottled):
            await client.batch_create(KEY, ["d-1"], deadline=start + 60.0)
    assert time.now >= start + 60.0 - 40.0  # the pauses double (2-5 s, 4-10 s, ...) until one would pass it
    assert len(scripted.requests) >= 3


async def test_retry_after_seconds_pauses_the_limiter_and_is_not_a_retry(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429, headers={"Retry-After": "60"})] * 2 + [Reply(200, job_json())]
    time = InstantTime()
    start = time.now
    async with make_client(settings_for(scripted.url, retry_max_tries=1), time) as client:
        await client.batch_create(KEY, ["d-1"])
    assert time.now - start >= 120.0
    assert time.sleeps == []


async def test_retry_after_as_an_http_date_is_honoured(scripted: ScriptedServer) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    scripted.replies = [Reply(429, headers={"Retry-After": when}), Reply(200, job_json())]
    time = InstantTime()
    start = time.now
    async with make_client(settings_for(scripted.url), time) as client:
        await client.batch_create(KEY, ["d-1"])
    assert 27.0 <= time.now - start <= 30.5


async def test_a_retry_after_beyond_the_budget_gives_up_at_once(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429, headers={"Retry-After": "100"})]
    time = InstantTime()
    async with make_client(settings_for(scripted.url, retry_max_time_s=10.0), time) as client:
        with pytest.raises(ApiThrottled):
            await client.batch_create(KEY, ["d-1"])
    assert time.sleeps == []
    assert len(scripted.requests) == 1


async def test_a_granted_call_is_the_first_try_and_is_released_after_it(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(200, job_json())]
    time = InstantTime()
    start = time.now
    async with make_client(settings_for(scripted.url, rate_burst=1, rate_limit=0.001), time) as client:
        grant = await client.limiter.acquire("p")
        await client.batch_create(KEY, ["d-1"], grant=grant)
        assert client.limiter.in_flight == 0
    assert time.now - start < 1.0  # a second token would have taken ~1000 s of the fake clock
    assert len(scripted.requests) == 1


async def test_5xx_answers_are_retried_then_succeed(scripted: ScriptedServer) -> None:
    scripted.replies = [
        Reply(503),
        Reply(500, b'{"error_code": "WKS.0005", "error_msg": "ECS"}'),
        Reply(200, job_json()),
    ]
    time = InstantTime()
    async with make_client(settings_for(scripted.url), time) as client:
        job = await client.batch_create(KEY, ["d-1"])
    assert job.job_id == "job-1"
    assert time.sleeps == [0.5, 1.0]


async def test_an_html_502_page_becomes_a_typed_server_error(simulator: Simulator) -> None:
    simulator.config.html_error_ratio = 1.0
    async with make_client(settings_for(simulator.url, retry_max_tries=1), InstantTime()) as client:
        with pytest.raises(ApiServerError) as caught:
            await client.batch_create(KEY, ["d-1"])
    error = caught.value
    assert (error.http_status, error.error_code, error.retryable) == (502, "HTTP.502", True)
    assert str(error).startswith("HTTP 502 Bad Gateway: 502 Bad Gateway")
    assert "<" not in str(error)


async def test_an_empty_error_body_becomes_a_typed_error(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503)]
    async with make_client(settings_for(scripted.url, retry_max_tries=1), InstantTime()) as client:
        with pytest.raises(ApiServerError) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert (caught.value.error_code, str(caught.value)) == ("HTTP.503", "HTTP 503 Service Unavailable (empty body)")


async def test_backoff_stops_after_max_tries(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503)]
    time = InstantTime()
    async with make_client(settings_for(scripted.url, retry_max_tries=4), time) as client:
        with pytest.raises(ApiServerError):
            await client.batch_create(KEY, ["d-1"])
    assert time.sleeps == [0.5, 1.0, 2.0]
    assert len(scripted.requests) == 4


async def test_backoff_stops_when_the_time_budget_is_spent(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503)]
    time = InstantTime()
    async with make_client(settings_for(scripted.url, retry_max_tries=20, retry_max_time_s=3.0), time) as client:
        with pytest.raises(ApiServerError):
            await client.batch_create(KEY, ["d-1"])
    assert time.sleeps == [0.5, 1.0, 1.5]  # the third wait is cut to what the budget has left
    assert len(scripted.requests) == 4


async def test_backoff_is_jittered_by_default(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503)]
    time = InstantTime()
    settings = settings_for(scripted.url, retry_max_tries=6)
    limiter = RateLimiter.from_settings(settings, clock=time.clock, sleep=time.limiter_sleep)
    async with WorkspaceClient(settings, limiter=limiter, clock=time.clock, sleep=time.sleep) as client:
        with pytest.raises(ApiServerError):
            await client.batch_create(KEY, ["d-1"])
    assert all(0.0 <= wait <= cap for wait, cap in zip(time.sleeps, [0.5, 1.0, 2.0, 4.0, 8.0], strict=True))
    assert time.sleeps != [0.5, 1.0, 2.0, 4.0, 8.0]


async def test_queueing_for_the_first_try_does_not_spend_the_time_budget(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503), Reply(200, job_json())]
    time = InstantTime()
    settings = settings_for(scripted.url, retry_max_time_s=5.0)
    client = make_client(settings, time)
    client.limiter.on_throttle(60.0)  # everyone waits a minute before the first try
    async with client:
        job = await client.batch_create(KEY, ["d-1"])
    assert job.job_id == "job-1"
    assert time.now >= 1060.0
    assert time.sleeps == [0.5]


# -- transport errors and timeouts


async def test_a_refused_connection_is_a_transport_error_and_retried() -> None:
    time = InstantTime()
    async with make_client(
        settings_for(f"http://127.0.0.1:{unused_loopback_port()}", retry_max_tries=3), time
    ) as client:
        with pytest.raises(ApiTransportError) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert type(caught.value) is ApiTransportError
    assert not caught.value.maybe_created
    assert isinstance(caught.value.__cause__, OSError)
    assert time.sleeps == [0.5, 1.0]


async def test_a_response_timeout_is_maybe_created_and_not_sent_again(simulator: Simulator) -> None:
    simulator.config.latency_s = 0.4
    time = InstantTime()
    async with make_client(settings_for(simulator.url, read_timeout_s=0.1), time) as client:
        with pytest.raises(ApiResponseTimeout) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert caught.value.maybe_created
    assert time.sleeps == []
    assert simulator.stats()["calls_total"] == 1


async def test_a_post_whose_connection_drops_after_it_was_sent_is_lost_and_sent_once(
    scripted: ScriptedServer,
) -> None:
    scripted.replies = [Reply(200, job_json(), drop=True), Reply(200, job_json())]
    time = InstantTime()
    async with make_client(settings_for(scripted.url), time) as client:
        with pytest.raises(ApiResponseLost) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert caught.value.maybe_created
    assert caught.value.error_code == "SNAPWORKER.RESPONSE_LOST"
    assert len(scripted.requests) == 1
    assert time.sleeps == []


async def test_a_2xx_whose_body_breaks_off_is_lost_and_maybe_created(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(200, b'{"job_id": "jo', short_body=True)]
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        with pytest.raises(ApiResponseLost) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert caught.value.maybe_created
    assert len(scripted.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [
        Reply(502, b'{"error_code": "APIG.0201", "error_msg": "Backend unavailable"}'),
        Reply(504),
        Reply(500, b"<html>Internal Server Error</html>"),
    ],
)
async def test_a_5xx_that_is_not_the_services_own_refusal_may_have_been_processed(
    scripted: ScriptedServer, reply: Reply
) -> None:
    scripted.replies = [reply, Reply(200, job_json())]
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        with pytest.raises(ApiServerError) as caught:
            await client.batch_create(KEY, ["d-1"])
    assert caught.value.maybe_created
    assert len(scripted.requests) == 1


async def test_a_get_whose_connection_drops_is_tried_again(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(200, b"{}", drop=True), Reply(200, b'{"id": "job-1"}')]
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        assert await client.get_job(PROJECT, "job-1") == {"id": "job-1"}
    assert len(scripted.requests) == 2


async def test_a_post_never_waits_for_a_pooled_connection_behind_slow_reads(scripted: ScriptedServer) -> None:
    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET":
            await asyncio.sleep(3.0)
            return web.Response(body=b"{}")
        return web.Response(body=job_json())

    scripted.handle = handle  # type: ignore[method-assign]
    settings = settings_for(scripted.url, read_timeout_s=1.0, max_concurrency=4, read_rate_limit=1000.0)
    async with WorkspaceClient(settings) as client:
        reads = [asyncio.create_task(client.get_job(PROJECT, f"job-{i}")) for i in range(40)]
        await asyncio.sleep(0.2)  # the reads hold every read slot, and more wait in the read budget
        job = await asyncio.wait_for(client.batch_create(KEY, ["d-1"]), timeout=2.0)
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
    assert job.job_id == "job-1"


async def test_reads_go_through_the_read_budget_by_default(simulator: Simulator) -> None:
    async with make_client(settings_for(simulator.url, read_rate_burst=1, read_rate_limit=1.0), InstantTime()) as c:
        created = await c.batch_create(KEY, ["d-1"])
        await c.get_job(PROJECT, created.job_id)
        assert c.read_limiter.in_flight == 0
        assert c.read_limiter.max_rate == pytest.approx(0.9)  # paced under READ_RATE_LIMIT: see _READ_HEADROOM


# -- jobs


async def test_get_job_returns_the_job_document(simulator: Simulator) -> None:
    async with make_client(settings_for(simulator.url), InstantTime()) as client:
        created = await client.batch_create(KEY, ["d-1"])
        job = await client.get_job(PROJECT, created.job_id)
    assert job["id"] == created.job_id
    assert [sub["entities"]["desktop_id"] for sub in job["sub_jobs"]] == ["d-1"]


async def test_get_job_of_an_unknown_job_is_a_404_client_error(simulator: Simulator) -> None:
    async with make_client(settings_for(simulator.url), InstantTime()) as client:
        with pytest.raises(ApiClientError) as caught:
            await client.get_job(PROJECT, "no-such-job")
    assert (caught.value.http_status, caught.value.error_code) == (404, "WKS.0202")


# -- rate limiting, logging, metrics


async def test_peak_calls_in_any_second_stay_within_rate_plus_burst(simulator: Simulator) -> None:
    settings = settings_for(simulator.url, rate_limit=20.0, rate_burst=5, max_concurrency=8)
    async with WorkspaceClient(settings) as client:  # real time: ~1.5 s
        await asyncio.gather(*(client.batch_create(KEY, [f"d-{i}"]) for i in range(35)))
    stats = simulator.stats()
    assert stats["jobs_created"] == 35
    assert 20 <= stats["max_calls_in_one_second"] <= 25


async def test_each_retry_is_logged_with_its_context_and_no_secret(
    scripted: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.replies = [Reply(503, b'{"error_code": "APIG.0201", "error_msg": "down"}', {"X-Request-Id": "rid-1"})]
    caplog.set_level(logging.WARNING, logger="snapworker.cloud")
    async with make_client(settings_for(scripted.url, retry_max_tries=3), InstantTime()) as client:
        with pytest.raises(ApiServerError):
            await client.batch_create(KEY, ["d-1"])
    retries = [r for r in caplog.records if r.name == "snapworker.cloud"]
    assert [(r.levelno, r.__dict__["attempt"]) for r in retries] == [(logging.WARNING, 1), (logging.WARNING, 2)]
    message = retries[0].getMessage()
    for part in (PROJECT, "status=503", "error_code=APIG.0201", "attempt=1", "api_request_id=rid-1"):
        assert part in message
    assert SIM_TOKEN not in caplog.text


@dataclass
class CountingObserver:
    calls: list[str] = field(default_factory=list)
    retries: int = 0
    throttles: int = 0

    def on_call(self, status_class: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append(status_class)

    def on_retry(self) -> None:
        self.retries += 1

    def on_throttle(self) -> None:
        self.throttles += 1


async def test_the_observer_sees_calls_retries_and_throttles(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429), Reply(503), Reply(200, job_json())]
    observer = CountingObserver()
    async with make_client(settings_for(scripted.url), InstantTime(), observer=observer) as client:
        await client.batch_create(KEY, ["d-1"])
    assert (observer.calls, observer.retries, observer.throttles) == (["4xx", "5xx", "2xx"], 2, 1)


async def test_a_call_given_fewer_tries_stops_there_and_says_how_many_it_made(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(503)]
    async with make_client(settings_for(scripted.url, retry_max_tries=8), InstantTime()) as client:
        with pytest.raises(ApiServerError) as caught:
            await client.batch_create(KEY, ["d-1"], max_tries=2)
    assert caught.value.tries == 2
    assert len(scripted.requests) == 2
