"""Who owns a request: a whole worker on a broker-free session and a real HTTP API on loopback.

A batch whose requests went back to the broker sends nothing more; a drain stops granting before it cancels;
a result goes out even when tracking fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import RateLimiter
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.cloud.test_client import Reply, ScriptedServer, job_json, settings_for
from tests.cloud.test_client import scripted as scripted  # the fixture
from tests.cloud.test_limiter import FakeTime
from tests.worker_fakes import BrokerlessSession

__all__ = ["scripted"]


def request(project: str = "p1", *desktops: str) -> bytes:
    return json.dumps({"project_id": project, "desktop_ids": list(desktops or ("d1",))}).encode()


async def until(condition: Callable[[], bool], *, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - the conditions are the worker's state, with no event to wait on
            await asyncio.sleep(0.01)


@asynccontextmanager
async def serving(
    settings: Settings, api: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Worker, list[BrokerlessSession]]]:
    """A running worker whose broker sessions are BrokerlessSessions (the list grows as it reconnects)."""
    sessions: list[BrokerlessSession] = []

    async def open_session(_: Settings) -> BrokerlessSession:
        sessions.append(BrokerlessSession(prefetch=settings.prefetch))
        return sessions[-1]

    monkeypatch.setattr("snapworker.runtime.sessions.AmqpSession.open", open_session)
    worker = Worker(settings, api=api)
    running = asyncio.create_task(worker.run())
    await until(lambda: bool(sessions) and sessions[-1].consuming)
    try:
        yield worker, sessions
    finally:
        async with asyncio.timeout(10):
            await worker.close()
            await running


def quiet(url: str, **overrides: Any) -> Settings:
    """The worker's settings for these tests: no store, no tracking, batches go at once."""
    # unpartitioned: the broker-free session has no partition queues to route to
    fields: dict[str, Any] = {"idempotency_store": "off", "track_jobs": False, "linger_ms": 0, "partitions": 0}
    return settings_for(url, **(fields | overrides))


async def test_a_throttled_batch_whose_session_was_lost_sends_no_further_try(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted.replies = [Reply(429), Reply(200, job_json())]
    time = FakeTime(asyncio.get_running_loop().time())
    settings = quiet(scripted.url)
    limiter = RateLimiter.from_settings(settings, clock=time.clock, sleep=time.sleep)
    api = WorkspaceClient(settings, limiter=limiter, clock=time.clock, sleep=time.sleep)
    async with api, serving(settings, api, monkeypatch) as (worker, sessions):
        first = sessions[0]
        first.push(request())
        await until(lambda: len(scripted.requests) == 1)  # throttled: the next try waits out the pause
        first.lose()  # meanwhile the request is redelivered, maybe to another worker
        await until(lambda: first.closed)
        await time.advance(600.0)  # far past the throttle's pause
        await until(lambda: all(t.done() for t in worker._tasks))
    assert len(scripted.requests) == 1
    assert first.published == []
    assert first.settled == []


async def test_a_drain_sends_no_call_once_it_began_cancelling(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    released = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        scripted.requests.append((request, await request.read()))
        await released.wait()
        return web.Response(status=200, body=job_json())

    scripted.handle = hang  # type: ignore[method-assign]
    # one call at a time: the second batch waits for the first call's slot
    settings = quiet(scripted.url, max_concurrency=1, shutdown_timeout_s=0.3)
    async with WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings)) as api:
        async with serving(settings, api, monkeypatch) as (worker, sessions):
            session = sessions[0]
            session.push(request("p1"))
            session.push(request("p2"))
            await until(lambda: len(scripted.requests) == 1)
        assert all(t.done() for t in worker._tasks)
    released.set()
    assert len(scripted.requests) == 1  # the slot the cancelled call freed was not granted again
    assert sorted(d.tag for d, how in session.settled if how == "requeue") == [1, 2]
    assert session.published == []


class RaisingTracker:
    """A tracker whose start raises (a bug, or a broker error nobody translated)."""

    def __init__(self) -> None:
        self._closed = asyncio.Event()

    async def start(self, answered: object) -> bool:
        raise RuntimeError("tracking broke")

    async def run(self) -> None:
        await self._closed.wait()

    async def close(self, *, deadline: float | None = None) -> None:
        self._closed.set()


async def test_a_result_goes_out_and_its_request_is_acked_when_tracking_raises(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("snapworker.tracking.tracker_for", lambda settings, api: RaisingTracker())
    settings = quiet(scripted.url)
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (_, sessions):
        session = sessions[0]
        delivery = session.push(request())
        await until(lambda: bool(session.settled))
    [published] = session.published
    assert json.loads(published.body)["status"] == "accepted"
    assert session.settled == [(delivery, "ack")]


async def test_a_background_loop_that_dies_makes_the_worker_not_ready_and_says_why(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_report(self: object) -> None:
        raise RuntimeError("the reporter broke")

    monkeypatch.setattr("snapworker.runtime.worker.ProgressReporter.run", broken_report)
    settings = quiet(scripted.url, progress_interval_s=1.0)
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (worker, _):
        await until(lambda: bool(worker.problems()))
        assert not worker.ready()
        [(name, why)] = worker.problems().items()
        assert name == "progress reporter"
        assert "the reporter broke" in why
