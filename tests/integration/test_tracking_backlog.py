"""Results never wait for tracking, on a real RabbitMQ: a unit started before the tracking connection is up is
published into the first wait queue once it is, or by close within the shutdown deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import aio_pika
import pytest

from snapworker.cloud.jobs import JobReader
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker, tracking_queues
from snapworker.tracking.topology import wait_queue
from tests.tracking.test_state import result


class _Reader:
    reads = 0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """This test's own tracking queues; a first look far away, so that the unit stays in its wait queue."""
    return settings.model_copy(update={"track_jobs": True, "track_first_poll_s": 60.0, "track_max_poll_s": 60.0})


@pytest.fixture
async def channel(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    conn = await aio_pika.connect(settings.amqp_url.get_secret_value())
    try:
        channel = await conn.channel()
        yield channel
        for queue in tracking_queues(settings):
            await channel.queue_delete(queue)
    finally:
        await conn.close()


async def waiting_in_first_queue(channel: aio_pika.abc.AbstractChannel, settings: Settings) -> int:
    queue = await channel.declare_queue(wait_queue(settings, 60.0), passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_a_unit_started_before_the_tracking_connection_is_published_once_it_is_up(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    tracker = Tracker(settings, cast(JobReader, _Reader()))
    answered = [(result("r1", ("job-1", ("desk-1",))), None)]
    assert await asyncio.wait_for(tracker.start(answered), timeout=1.0) is False
    running = asyncio.create_task(tracker.run())
    try:
        for _ in range(100):
            if tracker.units_started == 1:
                break
            await asyncio.sleep(0.05)
        assert await waiting_in_first_queue(channel, settings) == 1
    finally:
        await tracker.close(deadline=asyncio.get_running_loop().time() + 5.0)
        await asyncio.wait_for(running, timeout=10.0)


async def test_close_publishes_the_backlog_before_run_ends(
    settings: Settings, channel: aio_pika.abc.AbstractChannel
) -> None:
    tracker = Tracker(settings, cast(JobReader, _Reader()))
    for i in range(3):
        await tracker.start([(result(f"r{i}", (f"job-{i}", (f"desk-{i}",))), None)])
    running = asyncio.create_task(tracker.run())
    await tracker.close(deadline=asyncio.get_running_loop().time() + 5.0)
    await asyncio.wait_for(running, timeout=10.0)
    assert (tracker.units_started, len(tracker.backlog)) == (3, 0)
    assert await waiting_in_first_queue(channel, settings) == 3
