"""The call's lease, asked before every try: once it lapses, nothing more is sent (snapworker.cloud.lease)."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import RateLimiter
from snapworker.errors import ApiCallAbandoned
from tests.cloud.test_client import KEY, InstantTime, Reply, ScriptedServer, job_json, make_client, settings_for
from tests.cloud.test_client import scripted as scripted  # the fixture

__all__ = ["scripted"]


class Lease:
    """A lease a test lapses by hand; ``allow`` is what ``before_try`` answers."""

    def __init__(self, *, allow: bool = True) -> None:
        self.lapsed = asyncio.Event()
        self.allow = allow
        self.asked = 0

    async def before_try(self) -> bool:
        self.asked += 1
        return self.allow


async def test_a_try_waiting_for_the_limiter_stops_waiting_once_the_lease_lapses(scripted: ScriptedServer) -> None:
    settings = settings_for(scripted.url)
    limiter = RateLimiter(rate=0.001, burst=1, max_concurrency=10)  # after one call, the next waits ~1,000 s
    first = await limiter.acquire("someone else")
    limiter.release()
    assert first is not None
    lease = Lease()
    async with WorkspaceClient(settings, limiter=limiter) as client:
        call = asyncio.create_task(client.batch_create(KEY, ["d-1"], lease=lease))
        await asyncio.sleep(0.05)
        assert not call.done()  # waiting for the limiter
        lease.lapsed.set()
        async with asyncio.timeout(2):
            with pytest.raises(ApiCallAbandoned):
                await call
    assert scripted.requests == []
    assert limiter.queued == 0
    assert limiter.in_flight == 0


async def test_a_lapsed_lease_sends_nothing_even_with_a_grant(scripted: ScriptedServer) -> None:
    lease = Lease()
    lease.lapsed.set()
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        grant = await client.limiter.acquire("p")
        with pytest.raises(ApiCallAbandoned):
            await client.batch_create(KEY, ["d-1"], grant=grant, lease=lease)
        assert client.limiter.in_flight == 0  # the grant went back
    assert scripted.requests == []


async def test_a_throttled_call_sends_no_further_try_once_its_lease_lapses(scripted: ScriptedServer) -> None:
    lease = Lease()

    async def throttled_then_lapsed(request: web.Request) -> web.StreamResponse:
        scripted.requests.append((request, await request.read()))
        lease.lapsed.set()  # meanwhile the requests went back to the broker
        return web.Response(status=429)

    scripted.handle = throttled_then_lapsed  # type: ignore[method-assign]
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        with pytest.raises(ApiCallAbandoned) as raised:
            await client.batch_create(KEY, ["d-1"], lease=lease)
    assert len(scripted.requests) == 1
    assert (raised.value.retryable, raised.value.maybe_created) == (True, False)


async def test_a_try_the_lease_refuses_is_not_sent(scripted: ScriptedServer) -> None:
    lease = Lease(allow=False)
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        with pytest.raises(ApiCallAbandoned):
            await client.batch_create(KEY, ["d-1"], lease=lease)
        assert client.limiter.in_flight == 0
    assert scripted.requests == []
    assert lease.asked == 1


async def test_a_lease_that_holds_is_asked_before_every_try(scripted: ScriptedServer) -> None:
    scripted.replies = [Reply(429), Reply(503), Reply(200, job_json())]
    lease = Lease()
    async with make_client(settings_for(scripted.url), InstantTime()) as client:
        job = await client.batch_create(KEY, ["d-1"], lease=lease)
    assert job.job_id == "job-1"
    assert lease.asked == len(scripted.requests) == 3
