"""Urgent requests are visible: how many a worker holds (a gauge, and ``top``'s URG column) and how long they take,
from the worker holding one to its result confirmed (a histogram), counted for urgent requests only."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import RateLimiter
from snapworker.contract.models import SnapshotRequest
from snapworker.ops.metrics import build_registry
from snapworker.ops.urgent_latency import UrgentLatency
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.tools.top_figures import parse_metrics
from tests.cloud.test_client import ScriptedServer
from tests.cloud.test_client import scripted as scripted  # the fixture
from tests.test_worker_ownership import quiet, request, serving, until

__all__ = ["scripted"]


@dataclass(eq=False)
class _Session:
    lost: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Held:
    session: _Session = field(default_factory=_Session)
    settled: bool = False


def _buckets(latency: UrgentLatency) -> dict[str, float]:
    return dict(latency.buckets())


def test_an_urgent_request_is_observed_in_the_bucket_of_its_latency() -> None:
    latency, held = UrgentLatency(), _Held()
    latency.arrived(held, 100.0)
    latency.answered([held], 101.5)
    assert (latency.count, latency.sum_s) == (1, 1.5)
    assert _buckets(latency)["1"] == 0
    assert _buckets(latency)["2"] == 1
    assert _buckets(latency)["+Inf"] == 1
    assert latency.timing == 0


def test_a_request_that_was_not_timed_is_not_observed() -> None:
    latency = UrgentLatency()
    latency.arrived(_Held(), 0.0)
    latency.answered([_Held()], 5.0)
    assert latency.count == 0
    assert latency.timing == 1


def test_requests_settled_elsewhere_or_whose_session_was_lost_are_forgotten() -> None:
    latency = UrgentLatency()
    kept = [_Held() for _ in range(10)]
    settled = [_Held(settled=True) for _ in range(500)]
    returned = [_Held() for _ in range(500)]
    for held in returned:
        held.session.lost.set()
    for held in [*kept, *settled, *returned]:
        latency.arrived(held, 0.0)
    assert latency.timing < 100  # not 1,010: what will never be answered here is not kept
    latency.answered(kept, 1.0)
    assert latency.count == 10


async def test_the_gauge_counts_the_urgent_requests_a_worker_holds() -> None:
    worker = Worker(Settings())
    registry, _ = build_registry(worker)
    worker.core.submit(object(), SnapshotRequest(project_id="p1", desktop_ids=("d1",)), "r1", None, 0.0, urgent=True)
    worker.core.submit(object(), SnapshotRequest(project_id="p1", desktop_ids=("d2",)), "r2", None, 0.0)
    assert registry.get_sample_value("snapworker_urgent_requests_waiting") == 1
    assert registry.get_sample_value("snapworker_batches_total", {"reason": "urgent"}) == 0


def test_top_reads_the_urgent_requests_a_worker_holds() -> None:
    text = "# TYPE snapworker_urgent_requests_waiting gauge\nsnapworker_urgent_requests_waiting 3.0\n"
    assert parse_metrics(text).urgent == 3


async def test_a_worker_times_its_urgent_requests_and_not_its_bulk_ones(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = quiet(scripted.url, linger_ms=0)
    api = WorkspaceClient(settings, limiter=RateLimiter.from_settings(settings))
    async with api, serving(settings, api, monkeypatch) as (worker, sessions):
        registry, _ = build_registry(worker)
        session = sessions[0]
        session.push(request("p1", "bulk-1"))
        await until(lambda: len(session.settled) == 1)
        assert registry.get_sample_value("snapworker_urgent_request_seconds_count") == 0
        urgent = {"project_id": "p2", "desktop_ids": ["now-1"], "priority": "urgent"}
        session.push(json.dumps(urgent).encode())
        await until(lambda: len(session.settled) == 2)
        assert registry.get_sample_value("snapworker_urgent_request_seconds_count") == 1
        assert registry.get_sample_value("snapworker_urgent_request_seconds_bucket", {"le": "+Inf"}) == 1
        assert registry.get_sample_value("snapworker_urgent_requests_waiting") == 0
