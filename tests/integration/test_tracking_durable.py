"""Durable waits on a real RabbitMQ: with SNAPWORKER_TRACKING_QUEUE_TYPE=quorum the tracking queues are quorum
queues dead-lettering at least once; classic keeps the classic topology; and a deployment whose tracking queues
were made classic (by a version before the setting) goes over to quorum queues losing no tracking message, whether
the new worker finds the classic tracking queue idle (replaced) or still consumed (used as it is)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tracking.topology import (
    QUORUM,
    classic_wait_queue,
    declare_tracking_topology,
    schedule_of,
    tracking_queues,
    wait_arguments,
    wait_queue,
)
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

PROJECT = "0123456789abcdef0123456789abcdef"
#: tracking on, a schedule slow enough that a message published into a wait queue is still there a second later
TRACKING: dict[str, object] = {
    "track_jobs": True,
    "track_first_poll_s": 2.0,
    "track_max_poll_s": 4.0,
    "track_deadline_s": 60.0,
    "read_rate_limit": 100.0,
    "read_rate_burst": 20,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with :data:`TRACKING` and classic tracking queues: the ``probe`` declares the
    topology a version before SNAPWORKER_TRACKING_QUEUE_TYPE made."""
    return settings.model_copy(update={**TRACKING, "tracking_queue_type": "classic"})


@pytest.fixture
def classic(settings: Settings) -> Settings:
    return settings


@pytest.fixture
def quorum(settings: Settings) -> Settings:
    return settings.model_copy(update={"tracking_queue_type": "quorum"})


@pytest.fixture
async def connection(quorum: Settings, classic: Settings) -> AsyncIterator[AbstractConnection]:
    """A connection to the broker; every tracking queue of either type is deleted at the end."""
    conn = await aio_pika.connect(quorum.amqp_url.get_secret_value())
    try:
        yield conn
    finally:
        cleanup = await conn.channel()
        for queue in {*tracking_queues(quorum), *tracking_queues(classic)}:
            await cleanup.queue_delete(queue)
        await conn.close()


@pytest.fixture
async def channel(connection: AbstractConnection) -> AbstractChannel:
    return await connection.channel(publisher_confirms=True)


async def is_quorum(connection: AbstractConnection, queue: str) -> bool:
    """Whether ``queue`` (declared with no argument but its type) is a quorum queue: the broker accepts a declare
    with x-queue-type quorum only then."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
    except aiormq.exceptions.ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


async def publish(channel: AbstractChannel, queue: str, body: bytes, *, expiration: float | None = None) -> None:
    message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, expiration=expiration)
    await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


async def arriving(channel: AbstractChannel, queue: str, count: int, *, timeout: float) -> list[bytes]:
    """The bodies of the first ``count`` messages consumed from ``queue`` within ``timeout`` (fewer if not)."""
    got: list[bytes] = []
    enough = asyncio.Event()

    async def take(message: AbstractIncomingMessage) -> None:
        got.append(message.body)
        await message.ack()
        if len(got) >= count:
            enough.set()

    source = await channel.declare_queue(queue, passive=True)
    tag = await source.consume(take)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(enough.wait(), timeout)
    await source.cancel(tag)
    return got


# -- the topology of each type


async def test_quorum_tracking_queues_are_quorum_and_dead_letter_at_least_once(
    quorum: Settings, connection: AbstractConnection, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, quorum)
    assert await is_quorum(connection, quorum.tracking_queue)
    for tier in schedule_of(quorum).tiers():
        arguments = wait_arguments(quorum, tier)
        assert arguments["x-dead-letter-strategy"] == "at-least-once"
        assert arguments["x-queue-type"] == "quorum"
        # accepted only if the queue has these very arguments (x-message-ttl included): a quorum queue
        await channel.declare_queue(wait_queue(quorum, tier), durable=True, arguments=arguments)


async def test_a_quorum_wait_queue_honours_each_messages_own_expiration(
    quorum: Settings, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, quorum)
    longest = wait_queue(quorum, quorum.track_max_poll_s)  # a TTL of 4 s
    started = asyncio.get_running_loop().time()
    await publish(channel, longest, b"jittered", expiration=0.5)
    assert await arriving(channel, quorum.tracking_queue, 1, timeout=3.0) == [b"jittered"]
    assert asyncio.get_running_loop().time() - started < 3.0  # its own 0.5 s, not the queue's 4 s


async def test_classic_tracking_queues_are_the_classic_topology_of_before(
    classic: Settings, connection: AbstractConnection, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, classic)
    assert wait_queue(classic, 2.0) == classic_wait_queue(classic, 2.0) == f"{classic.tracking_queue}.wait.2000ms"
    for queue in (classic.tracking_queue, wait_queue(classic, 2.0)):
        assert not await is_quorum(connection, queue)


# -- from classic tracking queues to quorum ones


async def test_an_idle_classic_tracking_queue_is_replaced_by_a_quorum_one_keeping_every_message(
    quorum: Settings, classic: Settings, connection: AbstractConnection, channel: AbstractChannel
) -> None:
    await declare_tracking_topology(channel, classic)  # as a version before the setting left them
    for i in range(3):
        await publish(channel, classic.tracking_queue, b"due-%d" % i)
    for i in range(3):
        await publish(channel, wait_queue(classic, 4.0), b"waiting-%d" % i, expiration=3.0)

    await declare_tracking_topology(channel, quorum)

    assert await is_quorum(connection, quorum.tracking_queue)
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):  # the classic wait queues are gone
        await (await connection.channel()).declare_queue(classic_wait_queue(quorum, 4.0), passive=True)
    bodies = await arriving(channel, quorum.tracking_queue, 6, timeout=10.0)
    assert sorted(bodies) == [b"due-0", b"due-1", b"due-2", b"waiting-0", b"waiting-1", b"waiting-2"]


async def test_a_classic_tracking_queue_in_use_is_kept_and_the_quorum_wait_queues_feed_it(
    quorum: Settings,
    classic: Settings,
    connection: AbstractConnection,
    channel: AbstractChannel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await declare_tracking_topology(channel, classic)
    in_use = await connection.channel()  # a worker of before, consuming

    async def holding(_message: AbstractIncomingMessage) -> None:
        pass

    await (await in_use.declare_queue(classic.tracking_queue, passive=True)).consume(holding)
    with caplog.at_level(logging.WARNING, logger="snapworker.tracking"):
        await declare_tracking_topology(channel, quorum)
    await in_use.close()

    assert not await is_quorum(connection, quorum.tracking_queue)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"tracking queue {quorum.tracking_queue!r} is a classic queue that workers consume" in warning
    await publish(channel, wait_queue(quorum, 2.0), b"unit", expiration=0.2)
    assert await arriving(channel, quorum.tracking_queue, 1, timeout=5.0) == [b"unit"]


# -- workers: units tracked by classic workers, finished by quorum ones


def request(request_id: str) -> dict[str, object]:
    return {"project_id": PROJECT, "desktop_ids": [f"desk-{request_id}"], "request_id": request_id}


async def completed(probe: BrokerProbe, ids: list[str], *, timeout: float) -> Counter[str]:
    """Completions per request, once each of ``ids`` has one."""

    async def all_there() -> bool:
        return {c.request_id for c in probe.completions()} >= set(ids)

    await probe.wait_until(f"completions of {len(ids)} requests", all_there, timeout=timeout)
    return Counter(c.request_id for c in probe.completions())


@pytest.mark.parametrize("old_worker_still_running", [False, True], ids=["stopped-first", "rolling"])
async def test_units_of_classic_workers_are_all_completed_after_the_upgrade_to_quorum(
    old_worker_still_running: bool,
    simulator: Simulator,
    probe: BrokerProbe,
    classic: Settings,
    connection: AbstractConnection,
    start_worker: Callable[..., Awaitable[Worker]],
) -> None:
    simulator.config.job_duration_s = 6.0  # still running at the upgrade: their units wait in the wait queues
    ids = [f"r{i}" for i in range(6)]
    old = await start_worker(tracking_queue_type="classic")
    await probe.publish_many([request(i) for i in ids])
    await probe.wait_for(len(ids), queue=classic.result_queue, timeout=20)
    if not old_worker_still_running:
        await old.close()
    await start_worker(tracking_queue_type="quorum")
    if old_worker_still_running:

        async def both_consume() -> bool:
            return await probe.consumers(classic.tracking_queue) == 2

        await probe.wait_until("the new worker to consume the tracking queue too", both_consume, timeout=10)
        await old.close()
    counts = await completed(probe, ids, timeout=30)
    assert set(counts) == set(ids)
    assert {c.status for c in probe.completions()} == {"succeeded"}
    # idle, it was replaced; consumed by the old worker, it was used as it is
    assert await is_quorum(connection, classic.tracking_queue) is not old_worker_still_running
