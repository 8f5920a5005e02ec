"""A partitioned fleet on the real broker: each partition has one owner, and a project's desktops meet in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from snapworker.amqp.partitioning import partition_queue
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

PARTITIONS = 4


@pytest.fixture
def partitioned(settings: Settings) -> Settings:
    # a long linger: batches go when full, so a call of fewer than 100 desktops shows a project split in two
    return settings.model_copy(update={"partitions": PARTITIONS, "linger_ms": 3000})


@pytest.fixture
async def fleet_probe(partitioned: Settings) -> AsyncIterator[BrokerProbe]:
    async with BrokerProbe(partitioned) as p:
        yield p


@pytest.fixture
async def start(partitioned: Settings, fleet_probe: BrokerProbe) -> AsyncIterator[Callable[[], Awaitable[Worker]]]:
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start_one() -> Worker:
        worker = Worker(partitioned)
        running.append((worker, asyncio.create_task(worker.run())))
        await asyncio.wait_for(worker.consuming.wait(), timeout=10)
        return worker

    yield start_one
    for worker, task in running:
        await worker.close()
        await asyncio.wait_for(task, timeout=30)


async def owners_settled(probe: BrokerProbe, workers: int) -> bool:
    routers = await probe.consumers(probe.settings.request_queue)
    owners = [await probe.consumers(partition_queue(probe.settings.request_queue, p)) for p in range(PARTITIONS)]
    return routers == workers and owners == [1] * PARTITIONS


async def test_each_partition_ends_up_with_exactly_one_consumer(
    start: Callable[[], Awaitable[Worker]], fleet_probe: BrokerProbe
) -> None:
    await start()
    await start()
    await fleet_probe.wait_until("one owner per partition", lambda: owners_settled(fleet_probe, 2), timeout=20)


async def test_a_projects_requests_spread_over_the_fleet_meet_in_one_batch(
    start: Callable[[], Awaitable[Worker]], fleet_probe: BrokerProbe, simulator: Simulator
) -> None:
    workers = [await start(), await start()]
    await fleet_probe.wait_until("one owner per partition", lambda: owners_settled(fleet_probe, 2), timeout=20)
    await fleet_probe.publish_many([{"project_id": f"p{i % 4}", "desktop_ids": [f"d{i}"]} for i in range(400)])
    results = await fleet_probe.wait_for(400, timeout=30)
    assert {r.result.status for r in results} == {"accepted"}
    assert simulator.stats()["calls_total"] == 4  # one full call per project, as if one worker had them all
    assert sum(sum(w.stats.batch_sizes.values()) for w in workers) == 4


async def test_a_partition_left_by_a_stopped_worker_is_claimed_by_another(
    start: Callable[[], Awaitable[Worker]], fleet_probe: BrokerProbe
) -> None:
    first, _second = await start(), await start()
    await fleet_probe.wait_until("one owner per partition", lambda: owners_settled(fleet_probe, 2), timeout=20)
    await first.close()
    await fleet_probe.wait_until("the survivor owns all", lambda: owners_settled(fleet_probe, 1), timeout=20)
    await fleet_probe.publish_many([{"project_id": f"p{i}", "desktop_ids": ["d1"]} for i in range(8)])
    results = await fleet_probe.wait_for(8, timeout=20)
    assert {r.result.status for r in results} == {"accepted"}


async def test_a_partitioned_worker_stopping_answers_what_it_holds(
    start: Callable[[], Awaitable[Worker]], fleet_probe: BrokerProbe
) -> None:
    worker = await start()
    await fleet_probe.wait_until("its partitions claimed", lambda: owners_settled(fleet_probe, 1), timeout=20)
    await fleet_probe.publish_many([{"project_id": "p1", "desktop_ids": [f"d{i}"]} for i in range(5)])

    async def held() -> bool:
        return worker.core.open_requests == 5

    await fleet_probe.wait_until("the worker holds them (lingering)", held, timeout=10)
    await worker.close()  # the drain sends what is pending instead of returning it to the queue
    results = await fleet_probe.wait_for(5, timeout=10)
    assert {r.result.status for r in results} == {"accepted"}
