"""Urgent requests on the real broker: they reach a worker whose window the backlog fills, within 2 s.

The simulator answers every batch-create 429 for a minute, so nothing the worker holds is answered and its window
stays full of backlog while more waits in the queue: an urgent request can get through only by its own queue (the
urgent queue, or the urgent twin of its partition), consumed beside the backlog with a prefetch of its own.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from snapworker.amqp.partitioning import partition_of, partition_queue
from snapworker.amqp.session import Delivery
from snapworker.client import SnapshotClient
from snapworker.contract.models import SnapshotRequest
from snapworker.runtime.intake import Intake
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

BACKLOG = 2000
PROJECT = "p1"
WITHIN_S = 2.0


@pytest.fixture(params=["classic", "quorum"])
def queue_type(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[Delivery]:
    """Every delivery that reaches a worker's intake, in order (the intake then handles it as usual)."""
    seen: list[Delivery] = []
    original = Intake.on_delivery

    def on_delivery(self: Intake, delivery: Delivery) -> None:
        seen.append(delivery)
        original(self, delivery)

    monkeypatch.setattr(Intake, "on_delivery", on_delivery)
    return seen


@pytest.fixture
async def throttled(simulator: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{simulator.url}/_sim/throttle", params={"seconds": "60"})
        assert response.status == 200


Busy = Callable[[int], Awaitable[tuple[Settings, BrokerProbe]]]


@pytest.fixture
async def busy_worker(
    settings: Settings, queue_type: str, received: list[Delivery], throttled: None
) -> AsyncIterator[Busy]:
    """Starts a worker with ``partitions``, queues BACKLOG requests of one project and waits until the worker's
    window is full of them and the rest waits in the queue; returns the settings and a probe."""
    stack: list[tuple[Worker, asyncio.Task[None], BrokerProbe]] = []

    async def start(partitions: int) -> tuple[Settings, BrokerProbe]:
        # a long retry budget: the throttled calls keep their requests held instead of answering them failed
        s = settings.model_copy(update={"queue_type": queue_type, "partitions": partitions, "retry_max_time_s": 120})
        probe = BrokerProbe(s)
        await probe.__aenter__()
        worker = Worker(s)
        stack.append((worker, asyncio.create_task(worker.run()), probe))
        await asyncio.wait_for(worker.consuming.wait(), timeout=10)
        bodies = [{"project_id": PROJECT, "desktop_ids": [f"bulk-{i}"]} for i in range(BACKLOG)]
        backlog = s.request_queue
        if partitions:
            backlog = partition_queue(s.request_queue, partition_of(json.dumps(bodies[0]).encode(), partitions))
            await probe.wait_until("the lone worker owns the partitions", lambda: _owned(probe, backlog), timeout=10)
        await probe.publish_many(bodies)
        await probe.wait_until("the window full and backlog waiting", lambda: _full(probe, backlog, received))
        return s, probe

    try:
        yield start
    finally:
        for worker, task, probe in stack:
            await worker.close()
            await asyncio.wait_for(task, timeout=30)
            await probe.__aexit__()


async def _owned(probe: BrokerProbe, partition: str) -> bool:
    return await probe.consumers(partition) == 1


async def _full(probe: BrokerProbe, backlog: str, received: list[Delivery]) -> bool:
    held = len(received)
    waiting = await probe.queue_depth(backlog)
    if held + waiting != BACKLOG or waiting == 0:
        return False
    await asyncio.sleep(0.3)  # and no more comes
    return len(received) == held


async def _delivered(received: list[Delivery], desktop: str, since: float) -> tuple[Delivery, float]:
    """The delivery of the request for ``desktop`` and how long after ``since`` it reached the intake."""
    deadline = since + 10.0
    while time.monotonic() < deadline:
        found = [d for d in received if desktop.encode() in d.envelope.body]
        if found:
            return found[0], time.monotonic() - since
        await asyncio.sleep(0.01)
    raise AssertionError(f"the request for {desktop} never reached the worker")


@pytest.mark.parametrize("partitions", [0, 16], ids=["unpartitioned", "partitioned"])
async def test_an_urgent_request_published_with_the_client_reaches_a_worker_full_of_backlog_within_2_s(
    busy_worker: Busy, received: list[Delivery], partitions: int
) -> None:
    settings, _ = await busy_worker(partitions)
    held = len(received)
    async with SnapshotClient(settings) as client:
        since = time.monotonic()
        await client.publish(SnapshotRequest(project_id=PROJECT, desktop_ids=("on-demand",), priority="urgent"))
        delivery, took = await _delivered(received, "on-demand", since)
    assert took < WITHIN_S, f"{took:.2f} s"
    assert delivery.envelope.from_urgent_queue
    assert len(received) == held + 1  # it overtook the backlog: nothing else came


async def test_a_request_with_only_amqp_priority_9_on_the_request_queue_is_routed_to_the_urgent_twin(
    busy_worker: Busy, received: list[Delivery]
) -> None:
    _, probe = await busy_worker(16)
    since = time.monotonic()
    await probe.publish({"project_id": PROJECT, "desktop_ids": ["on-demand"]}, priority=9)
    delivery, took = await _delivered(received, "on-demand", since)
    assert took < WITHIN_S, f"{took:.2f} s"
    assert (delivery.envelope.from_urgent_queue, delivery.envelope.priority) == (True, 9)
