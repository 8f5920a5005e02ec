"""A whole worker (broker-free session, real HTTP on loopback) serves an urgent request at once: it does not wait
for the linger of the backlog it joins, and its call carries that backlog too."""

from __future__ import annotations

import json

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import RateLimiter
from tests.cloud.test_client import ScriptedServer
from tests.cloud.test_client import scripted as scripted  # the fixture
from tests.test_worker_ownership import quiet, request, serving, until

__all__ = ["scripted"]


def _urgent(project: str, *desktops: str) -> bytes:
    return json.dumps({"project_id": project, "desktop_ids": list(desktops), "priority": "urgent"}).encode()


async def test_an_urgent_request_goes_at_once_and_its_call_carries_the_waiting_backlog(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = quiet(scripted.url, linger_ms=60_000)  # the backlog would wait a minute
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (worker, sessions):
        session = sessions[0]
        session.push(request("p1", "bulk-1"))
        session.push(request("p1", "bulk-2"))
        session.push(_urgent("p1", "now-1"))
        await until(lambda: len(session.settled) == 3)
        assert worker.stats.as_dict()["batches_by_reason"] == {"urgent": 1}
    [(_, call)] = scripted.requests
    assert json.loads(call)["desktop_ids"] == ["now-1", "bulk-1", "bulk-2"]  # the urgent desktop first


async def test_a_request_with_amqp_priority_9_is_urgent(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = quiet(scripted.url, linger_ms=60_000)
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (worker, sessions):
        session = sessions[0]
        session.push(request("p1", "d1"), priority=9)  # the AMQP property only
        await until(lambda: len(session.settled) == 1)
        assert worker.stats.as_dict()["batches_by_reason"] == {"urgent": 1}


async def test_a_bulk_request_waits_for_its_linger(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = quiet(scripted.url, linger_ms=60_000)
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (worker, sessions):
        session = sessions[0]
        session.push(request("p1", "d1"))
        with pytest.raises(TimeoutError):
            await until(lambda: bool(session.settled), within_s=0.5)
        assert worker.core.urgent_waiting == 0
