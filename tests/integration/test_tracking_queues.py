"""The tracking loop's queues on a real RabbitMQ: the completion queue is bounded (the oldest dropped past the bound),
a completion queue made before the bound is used as it is with a warning naming the policy that bounds it in
place, and with no reply_to and no SNAPWORKER_COMPLETION_QUEUE nothing is tracked at all."""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from snapworker.amqp.bounded import policy_command
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tracking.topology import completion_queue_problems, declare_tracking_topology, tracking_queues
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

PROJECT = "0123456789abcdef0123456789abcdef"
BOUND = 3
#: tracking on, a fast schedule, a completion queue of BOUND completions
TRACKING: dict[str, object] = {
    "track_jobs": True,
    "track_first_poll_s": 0.2,
    "track_max_poll_s": 0.4,
    "track_deadline_s": 20.0,
    "read_rate_limit": 100.0,
    "read_rate_burst": 20,
    "completion_queue_max_length": BOUND,
}


@pytest.fixture
def tracking(settings: Settings) -> Settings:
    """This test's own queues (its completion queue named) with :data:`TRACKING`."""
    return settings.model_copy(update=TRACKING)


@pytest.fixture
async def channel(tracking: Settings) -> AsyncIterator[AbstractChannel]:
    """A channel with confirms; every queue of ``tracking`` is deleted at the end."""
    conn = await aio_pika.connect(tracking.amqp_url.get_secret_value())
    try:
        yield await conn.channel(publisher_confirms=True)
        cleanup = await conn.channel()
        for queue in tracking_queues(tracking):
            await cleanup.queue_delete(queue)
    finally:
        await conn.close()


async def publish(channel: AbstractChannel, queue: str, *bodies: bytes) -> None:
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue, mandatory=True)


async def depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def bodies(channel: AbstractChannel, queue: str) -> list[bytes]:
    source = await channel.declare_queue(queue, passive=True)
    taken = []
    while (message := await source.get(no_ack=True, fail=False)) is not None:
        taken.append(message.body)
    return taken


async def test_the_completion_queue_is_declared_with_its_bound_and_drop_head(
    tracking: Settings, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, tracking)
    same: dict[str, Any] = {"x-max-length": BOUND, "x-overflow": "drop-head"}
    await channel.declare_queue(tracking.completion_queue, durable=True, arguments=same)  # equivalent: accepted
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(tracking.completion_queue, durable=True)  # unbounded: not what it is


async def test_a_bounded_completion_queue_drops_the_oldest_past_its_bound(
    tracking: Settings, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, tracking)
    await publish(channel, tracking.completion_queue, b"1", b"2", b"3", b"4", b"5")
    assert await bodies(channel, tracking.completion_queue) == [b"3", b"4", b"5"]


async def test_an_unbounded_completion_queue_from_before_is_kept_with_a_warning_naming_the_policy(
    tracking: Settings, channel: AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    await channel.declare_queue(tracking.completion_queue, durable=True)  # as workers before the bound made it
    await publish(channel, tracking.completion_queue, *(str(i).encode() for i in range(5)))
    with caplog.at_level(logging.WARNING, logger="snapworker.amqp"):
        await declare_tracking_topology(channel, tracking)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert repr(tracking.completion_queue) in warning
    assert policy_command(tracking.completion_queue, BOUND) in warning
    await publish(channel, tracking.completion_queue, b"5")  # the channel is usable again, the queue as it was
    assert await depth(channel, tracking.completion_queue) == 6  # nothing lost, nothing dropped


async def test_a_bounded_queue_is_kept_as_it_is_when_the_bound_is_turned_off(
    tracking: Settings, channel: AbstractChannel, caplog: pytest.LogCaptureFixture
) -> None:
    await declare_tracking_topology(channel, tracking)
    unbounded = tracking.model_copy(update={"completion_queue_max_length": 0})
    with caplog.at_level(logging.WARNING, logger="snapworker.amqp"):
        await declare_tracking_topology(channel, unbounded)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "used as it is" in warning
    assert "set_policy" not in warning  # a max-length 0 policy would empty it
    await publish(channel, tracking.completion_queue, b"1", b"2", b"3", b"4")
    assert await depth(channel, tracking.completion_queue) == BOUND  # still bounded as declared


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on the broker's host")
async def test_the_logged_policy_bounds_the_old_queue_in_place(tracking: Settings, channel: AbstractChannel) -> None:
    await channel.declare_queue(tracking.completion_queue, durable=True)
    await publish(channel, tracking.completion_queue, *(str(i).encode() for i in range(5)))
    command = shlex.split(policy_command(tracking.completion_queue, BOUND))
    try:
        await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True, timeout=60)
        await publish(channel, tracking.completion_queue, b"5")
        assert await bodies(channel, tracking.completion_queue) == [b"3", b"4", b"5"]
    finally:
        await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "clear_policy", command[2]], timeout=60)


async def test_a_worker_asked_for_no_completion_tracks_nothing_and_reads_no_job(
    simulator: Simulator,
    probe: BrokerProbe,
    tracking: Settings,
    start_worker: Callable[..., Awaitable[Worker]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    simulator.config.job_duration_s = 0.0  # a tracked job would be read, and complete, at the first look
    unset = tracking.model_copy(update={"completion_queue": ""})
    for queue in tracking_queues(unset):
        probe.forget_at_exit(queue)
    await probe.watch(tracking.completion_queue)  # where the completions went before, had one been named
    with caplog.at_level(logging.INFO, logger="snapworker.tracking"):
        worker = await start_worker(**TRACKING, completion_queue="")
        for i in range(3):
            await probe.publish({"project_id": PROJECT, "desktop_ids": [f"desk-{i}"], "request_id": f"r{i}"})
        await probe.wait_for(3, queue=tracking.result_queue)
        await asyncio.sleep(5 * tracking.track_max_poll_s)  # several looks, had anything been tracked
        assert (await depth(probe.channel, tracking.tracking_queue)) == 0  # the worker did declare its queues
        await worker.close()
    assert simulator.stats()["job_queries"] == 0
    assert probe.completions() == []  # on the result, error, dead-letter and completion queues
    [totals] = [r.totals for r in caplog.records if r.getMessage() == "tracking totals"]  # type: ignore[attr-defined]
    assert (totals["units_started"], totals["requests_untracked"]) == (0, 3)


async def test_check_names_an_unbounded_completion_queue_that_nobody_reads(
    tracking: Settings, channel: AbstractChannel
) -> None:
    await channel.declare_queue(tracking.completion_queue, durable=True)
    await publish(channel, tracking.completion_queue, b"1")
    problems = await completion_queue_problems(tracking, channel)
    assert len(problems) == 2
    assert policy_command(tracking.completion_queue, BOUND) in problems[0]
    assert "1 completions and no consumer reads it" in problems[1]
    assert await depth(channel, tracking.completion_queue) == 1  # the channel is open again, nothing taken


async def test_check_finds_nothing_wrong_with_a_bounded_completion_queue_being_read(
    tracking: Settings, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, tracking)
    await channel.set_qos(prefetch_count=1)  # the reader holds one: the other waits in the queue

    async def reading(_message: AbstractIncomingMessage) -> None:
        pass

    await (await channel.declare_queue(tracking.completion_queue, passive=True)).consume(reading)
    await publish(channel, tracking.completion_queue, b"1", b"2")
    assert await completion_queue_problems(tracking, channel) == []
