"""The prefetch window of a partitioned worker: the partition consumers' prefetch counts share it, and exceed it only
to give each partition two batches (so a hot project's batch fills while its previous call is in flight). Each
consumed queue's urgent twin has URGENT_PREFETCH of its own, outside the window: see test_urgent_prefetch.py.

RabbitMQ applies basic.qos (global=false) to consumers started after it, so the fake channel below gives each
consumer the prefetch count set last, and keeps it until the consumer is cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from snapworker.amqp.partitioning import partition_queue
from snapworker.amqp.session import AmqpSession, Delivery
from snapworker.settings import Settings

WINDOW = 1000
PARTITIONS = 8
MAX_BATCH = Settings().max_batch
QUEUES = [partition_queue("snapworker.requests", p) for p in range(PARTITIONS)]


class FakeConsumeChannel:
    """The consume channel's aiormq underlay: each consumer keeps the prefetch count it was started under."""

    number = 1

    def __init__(self) -> None:
        self.is_closed = False
        self.consumers: dict[str, Callable[[DeliveredMessage], Coroutine[Any, Any, None]]] = {}
        self.prefetch_of: dict[str, tuple[str, int]] = {}  # consumer tag -> (queue, its prefetch count)
        self.cancelled_last_of: list[str] = []  # queues left without a consumer of ours by a cancel
        self._qos = 0
        # what amqp/inline.py hooks into (no delivery comes here)
        self._Channel__get_content_header = self._read_content = None

    async def basic_qos(self, *, prefetch_count: int) -> None:
        self._qos = prefetch_count

    async def rpc(self, frame: spec.Basic.Consume) -> None:
        # amqp/inline.py consumes without waiting for the consume-ok, its consumer registered first
        assert isinstance(frame, spec.Basic.Consume)
        assert frame.nowait
        assert frame.consumer_tag in self.consumers
        self.prefetch_of[frame.consumer_tag] = (frame.queue, self._qos)

    async def basic_cancel(self, tag: str) -> None:
        queue, _ = self.prefetch_of.pop(tag)
        del self.consumers[tag]
        if queue not in self.queues():
            self.cancelled_last_of.append(queue)

    def queues(self) -> set[str]:
        return {queue for queue, _ in self.prefetch_of.values()}

    def _window(self) -> list[int]:
        """The prefetch counts of the consumers of request queues and partitions (not of their urgent twins)."""
        return [prefetch for queue, prefetch in self.prefetch_of.values() if not queue.endswith(".urgent")]

    def total(self) -> int:
        return sum(self._window())

    def shares(self) -> list[int]:
        return sorted(self._window())

    def urgent(self) -> dict[str, int]:
        """Urgent twin -> the prefetch count of its consumer."""
        return {queue: prefetch for queue, prefetch in self.prefetch_of.values() if queue.endswith(".urgent")}


class FakeAioPikaChannel:
    def __init__(self, underlay: FakeConsumeChannel | None = None) -> None:
        self.close_callbacks: set[object] = set()
        self._underlay = underlay

    async def get_underlay_channel(self) -> FakeConsumeChannel | None:
        return self._underlay


class FakeConnection:
    def __init__(self) -> None:
        self.close_callbacks: set[object] = set()


@pytest.fixture
def channel() -> FakeConsumeChannel:
    return FakeConsumeChannel()


@pytest.fixture
async def session(channel: FakeConsumeChannel) -> AmqpSession:
    """A partitioned session consuming no partition yet, on the fake channel."""
    s = AmqpSession(
        Settings(prefetch=WINDOW, partitions=PARTITIONS),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractChannel, FakeAioPikaChannel(channel)),
        cast(AbstractChannel, FakeAioPikaChannel()),
    )
    await s.consume(lambda _: None, queues=[])
    return s


async def test_partitions_claimed_one_by_one_never_get_more_than_the_window_or_two_batches_each(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for n, queue in enumerate(QUEUES, 1):
        await session.attach(queue)
        assert channel.total() <= max(WINDOW, n * 2 * MAX_BATCH), (n, channel.shares())


async def test_each_of_many_partitions_gets_two_batches_even_past_the_window(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES:
        await session.attach(queue)
    assert channel.shares() == [2 * MAX_BATCH] * PARTITIONS  # 8 x 200 > WINDOW 1000


async def test_claimed_partitions_share_the_window_equally(session: AmqpSession, channel: FakeConsumeChannel) -> None:
    for queue in QUEUES[:3]:
        await session.attach(queue)
    assert channel.shares() == [WINDOW // 3] * 3


async def test_partitions_left_after_a_release_share_the_whole_window(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES:
        await session.attach(queue)
    for queue in QUEUES[4:]:
        await session.detach(queue)
    assert channel.shares() == [WINDOW // 4] * 4  # 250: above two batches


async def test_partitions_claimed_after_a_widening_stay_within_the_wider_window(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    await session.attach(QUEUES[0])
    await session.attach(QUEUES[1])
    await session.widen(3 * WINDOW)
    totals = [channel.total()]
    for queue in QUEUES[2:]:
        await session.attach(queue)
        totals.append(channel.total())
    assert max(totals) <= 3 * WINDOW, totals


async def test_a_widening_gives_every_partition_its_share_of_the_wider_window(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES[:4]:
        await session.attach(queue)
    await session.widen(2 * WINDOW)
    assert channel.shares() == [2 * WINDOW // 4] * 4


async def test_a_claimed_partition_is_never_left_without_our_consumer_while_shares_change(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    # Another worker would see it free and claim it too.
    for queue in QUEUES:
        await session.attach(queue)
    for queue in QUEUES[2:]:
        await session.detach(queue)
    await session.widen(2 * WINDOW)
    assert [q for q in channel.cancelled_last_of if not q.endswith(".urgent")] == QUEUES[2:]


async def test_a_window_ceiling_smaller_than_the_partitions_still_gives_each_one_request(
    channel: FakeConsumeChannel,
) -> None:
    s = AmqpSession(
        Settings(prefetch=4, prefetch_max=4, max_batch=4, partitions=PARTITIONS),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractChannel, FakeAioPikaChannel(channel)),
        cast(AbstractChannel, FakeAioPikaChannel()),
    )
    await s.consume(lambda _: None, queues=[])
    for queue in QUEUES:
        await s.attach(queue)
    # a prefetch count of 0 would mean no limit at all
    assert channel.shares() == [1] * PARTITIONS


async def test_an_unpartitioned_worker_consumes_with_the_whole_window(channel: FakeConsumeChannel) -> None:
    s = AmqpSession(
        Settings(prefetch=WINDOW),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractChannel, FakeAioPikaChannel(channel)),
        cast(AbstractChannel, FakeAioPikaChannel()),
    )
    await s.consume(lambda _: None)
    assert channel.shares() == [WINDOW]


# -- the urgent twins: consumed with their queue, at URGENT_PREFETCH each, outside the window

URGENT_PREFETCH = Settings().urgent_prefetch


def unpartitioned(channel: FakeConsumeChannel) -> AmqpSession:
    return AmqpSession(
        Settings(prefetch=WINDOW),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractConnection, FakeConnection()),
        cast(AbstractChannel, FakeAioPikaChannel(channel)),
        cast(AbstractChannel, FakeAioPikaChannel()),
    )


def message(tag: int, *, priority: int | None = None) -> DeliveredMessage:
    body = b'{"project_id": "p1", "desktop_ids": ["d1"]}'
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(consumer_tag="any", delivery_tag=tag),
        header=ContentHeader(properties=spec.Basic.Properties(priority=priority), body_size=len(body)),
        body=body,
        channel=cast(Any, None),
    )


def consumer_of(channel: FakeConsumeChannel, queue: str) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
    [tag] = [tag for tag, (q, _) in channel.prefetch_of.items() if q == queue]
    return channel.consumers[tag]


async def test_an_unpartitioned_worker_consumes_the_urgent_queue_with_its_own_prefetch(
    channel: FakeConsumeChannel,
) -> None:
    await unpartitioned(channel).consume(lambda _: None)
    assert channel.shares() == [WINDOW]
    assert channel.urgent() == {"snapworker.requests.urgent": URGENT_PREFETCH}


async def test_a_claimed_partitions_urgent_twin_is_consumed_outside_the_window_share(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES[:3]:
        await session.attach(queue)
    assert channel.shares() == [WINDOW // 3] * 3
    assert channel.urgent() == {f"{queue}.urgent": URGENT_PREFETCH for queue in QUEUES[:3]}


async def test_a_widening_leaves_the_urgent_consumers_as_they_are(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES[:4]:
        await session.attach(queue)
    before = {tag: owner for tag, owner in channel.prefetch_of.items() if owner[0].endswith(".urgent")}
    await session.widen(2 * WINDOW)
    after = {tag: owner for tag, owner in channel.prefetch_of.items() if owner[0].endswith(".urgent")}
    assert after == before  # the same consumers (tags), each still at URGENT_PREFETCH


async def test_shares_after_a_release_leave_the_urgent_consumers_as_they_are(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    for queue in QUEUES[:4]:
        await session.attach(queue)
    await session.detach(QUEUES[0])
    assert channel.shares() == [WINDOW // 3] * 3
    assert channel.urgent() == {f"{queue}.urgent": URGENT_PREFETCH for queue in QUEUES[1:4]}


async def test_a_released_partition_stops_its_urgent_twin_first(
    session: AmqpSession, channel: FakeConsumeChannel
) -> None:
    # until the partition itself has no consumer of ours, no other worker claims it and its twin
    await session.attach(QUEUES[0])
    await session.detach(QUEUES[0])
    assert channel.cancelled_last_of == [f"{QUEUES[0]}.urgent", QUEUES[0]]
    assert session.attached() == frozenset()


async def test_a_delivery_from_an_urgent_twin_is_marked_as_from_the_urgent_queue(
    channel: FakeConsumeChannel,
) -> None:
    received: list[Delivery] = []
    await unpartitioned(channel).consume(received.append)
    await consumer_of(channel, "snapworker.requests.urgent")(message(1))
    await consumer_of(channel, "snapworker.requests")(message(2))
    assert [d.envelope.from_urgent_queue for d in received] == [True, False]


async def test_a_delivery_carries_its_amqp_priority(channel: FakeConsumeChannel) -> None:
    received: list[Delivery] = []
    await unpartitioned(channel).consume(received.append)
    await consumer_of(channel, "snapworker.requests")(message(1, priority=9))
    await consumer_of(channel, "snapworker.requests")(message(2))
    assert [d.envelope.priority for d in received] == [9, None]


async def test_a_worker_whose_urgent_consumer_the_broker_cancelled_is_not_consuming(
    channel: FakeConsumeChannel,
) -> None:
    session = unpartitioned(channel)
    await session.consume(lambda _: None)
    assert session.consumer_attached()
    [tag] = [tag for tag, (queue, _) in channel.prefetch_of.items() if queue.endswith(".urgent")]
    del channel.consumers[tag]  # what aiormq does on the broker's basic.cancel
    assert not session.consumer_attached()
