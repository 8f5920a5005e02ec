"""The partition router without a broker: what it forwards, with which properties, and when it stops forwarding."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, cast

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from snapworker.amqp.partitioning import ROUTER_MADE_ID, partition_of, partition_queue, urgent_queue
from snapworker.amqp.partitions import Partitions
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.session import AmqpSession
from snapworker.amqp.settler import Settler
from snapworker.errors import BrokerError
from snapworker.settings import Settings

Callback = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]


class FakeRouterChannel:
    """The router's channel: records its consumers (by queue, each started under the prefetch count set last) and
    the settlements sent on it. Consumes come as aiormq frames (amqp/inline.py sends them without waiting)."""

    number = 1

    def __init__(self) -> None:
        self.is_closed = False
        self.consumers: dict[str, Callback] = {}
        self.tag_of: dict[str, str] = {}  # queue -> consumer tag
        self.prefetch_of: dict[str, int] = {}
        self.settled: list[tuple[str, int, bool]] = []
        self.routers = 1
        self._qos = 0
        # what amqp/inline.py hooks into (never called here: deliver() below calls the consumer's callback)
        self._Channel__get_content_header = self._read_content = None

    async def basic_qos(self, *, prefetch_count: int) -> None:
        self._qos = prefetch_count

    async def rpc(self, frame: spec.Basic.Consume) -> None:
        assert isinstance(frame, spec.Basic.Consume)
        assert frame.nowait
        assert frame.consumer_tag in self.consumers  # registered before the frame goes out
        self.tag_of[frame.queue] = frame.consumer_tag
        self.prefetch_of[frame.queue] = self._qos

    async def basic_cancel(self, tag: str) -> None:
        self.consumers.pop(tag, None)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.settled.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        self.settled.append(("nack", tag, multiple))

    async def deliver(self, message: DeliveredMessage, queue: str = "snapworker.requests") -> None:
        inline = self._snapworker_inline_callbacks  # type: ignore[attr-defined]
        inline[self.tag_of[queue]](message)

    async def queue_declare(self, queue: str, *, passive: bool = False) -> spec.Queue.DeclareOk:
        # the claimer's count: every partition is another worker's, so the router's own claim step claims none;
        # ``routers`` workers route (consume the request queue)
        routers = self.routers if queue == "snapworker.requests" else 1
        return spec.Queue.DeclareOk(queue, message_count=0, consumer_count=routers)


class FakeSession:
    """The parts of AmqpSession the router uses; ``forward`` records what it is given and confirms it all.

    Like the real publish path (publish.py), ``forward`` gives a message without message_id a random one, written
    into the properties it was handed: returns are matched by message_id.
    """

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.prefetch = Settings().prefetch  # the window
        self.consumer_lock = asyncio.Lock()
        self.router = FakeRouterChannel()
        self.forwarded: list[list[Outgoing]] = []

    async def open_channel(self) -> FakeRouterChannel:
        return self.router

    def attached(self) -> frozenset[str]:
        return frozenset()  # no partition of this worker's

    def consumes(self, queue: str) -> bool:
        return False

    def router_settler(self, channel: FakeRouterChannel, on_room: Callable[[], None]) -> Settler:
        return Settler(lambda: cast(Any, channel), self.lost, lambda exc: None)

    def takes_from_router(self, partition_queue: str) -> bool:
        return False

    @property
    def taken_from_router(self) -> int:
        return 0

    async def forward(self, messages: Sequence[Outgoing]) -> list[BrokerError | None]:
        for message in messages:
            if not message.properties.message_id:
                message.properties.message_id = uuid.uuid4().hex
        self.forwarded.append(list(messages))
        await asyncio.sleep(0)  # a confirm takes a round trip
        return [None] * len(messages)


@pytest.fixture
def session() -> FakeSession:
    return FakeSession()


@pytest.fixture
async def router(session: FakeSession) -> AsyncIterator[Partitions]:
    # the claimer's first step claims nothing (every partition has another consumer); until it, the router holds
    # what it receives, waiting to know which partitions are this worker's
    partitions = Partitions(cast(AmqpSession, session), Settings(partitions=4), claim_interval_s=0.01)
    await partitions.start()
    await asyncio.sleep(0.05)
    yield partitions
    await partitions.stop(timeout_s=1.0)


def request(
    tag: int, *, message_id: str | None = None, body: bytes | None = None, priority: int | None = None
) -> DeliveredMessage:
    body = body if body is not None else json.dumps({"project_id": "p1", "desktop_ids": [f"d{tag}"]}).encode()
    properties = spec.Basic.Properties(
        content_type="application/json", delivery_mode=2, message_id=message_id, priority=priority
    )
    return DeliveredMessage(
        delivery=spec.Basic.Deliver(consumer_tag="router", delivery_tag=tag, routing_key="snapworker.requests"),
        header=ContentHeader(properties=properties, body_size=len(body)),
        body=body,
        channel=cast(Any, None),
    )


async def until_idle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


async def test_after_the_session_is_lost_nothing_received_is_forwarded(
    session: FakeSession, router: Partitions
) -> None:
    session.lost.set()
    for tag in range(1, 4):
        await session.router.deliver(request(tag))
    await until_idle()
    # the broker returns these to the request queue with the session's connection: a copy would be a duplicate
    assert session.forwarded == []


async def test_a_lost_session_stops_forwarding_the_rest_of_the_inbox(session: FakeSession, router: Partitions) -> None:
    original_forward = session.forward

    async def forward_then_lose(messages: Sequence[Outgoing]) -> list[BrokerError | None]:
        outcomes = await original_forward(messages)
        session.lost.set()  # the session breaks while the first group is out
        return outcomes

    session.forward = forward_then_lose  # type: ignore[method-assign]
    # more than one forward group (500) waits in the inbox
    for tag in range(1, 1201):
        await session.router.deliver(request(tag))
    await until_idle()
    assert len(session.forwarded) == 1


async def test_forwarding_leaves_the_delivered_properties_untouched(session: FakeSession, router: Partitions) -> None:
    message = request(1)
    await session.router.deliver(message)
    await until_idle()
    assert message.header.properties.message_id is None


async def test_a_keyless_requests_copy_is_marked_as_keyless(session: FakeSession, router: Partitions) -> None:
    # Its copy carries a made-up message_id (returns are matched by it), which the consumer reads as no key: a
    # keyless request stays keyless (at least once), and two requests published alike stay two requests.
    await session.router.deliver(request(1))
    await until_idle()
    [[copied]] = session.forwarded
    assert copied.properties.message_id
    assert copied.properties.headers == {ROUTER_MADE_ID: True}


async def test_a_keyed_requests_copy_is_not_marked(session: FakeSession, router: Partitions) -> None:
    await session.router.deliver(request(1, message_id="req-1"))
    await until_idle()
    [[copied]] = session.forwarded
    assert ROUTER_MADE_ID not in (copied.properties.headers or {})


async def test_a_message_id_set_by_the_publisher_is_forwarded_as_it_is(
    session: FakeSession, router: Partitions
) -> None:
    await session.router.deliver(request(1, message_id="req-1"))
    await until_idle()
    assert [o.properties.message_id for o in session.forwarded[0]] == ["req-1"]


async def test_two_messages_with_one_id_never_share_a_forward(session: FakeSession, router: Partitions) -> None:
    # Confirms of returned messages are matched by message_id: two equal ids in one publish would mix them up.
    await session.router.deliver(request(1, message_id="same"))
    await session.router.deliver(request(2, message_id="same"))
    await until_idle()
    for group in session.forwarded:
        ids = [o.properties.message_id for o in group]
        assert len(ids) == len(set(ids))
    assert sum(len(group) for group in session.forwarded) == 2


# -- urgent requests: to the urgent twin of their partition, the urgent queue's before the backlog

P1 = partition_queue("snapworker.requests", partition_of(request(1).body, 4))  # the partition of project p1


def urgent_body(priority: str) -> bytes:
    return json.dumps({"project_id": "p1", "desktop_ids": ["d1"], "priority": priority}).encode()


def forwarded_to(session: FakeSession) -> list[str]:
    return [o.queue for group in session.forwarded for o in group]


async def test_the_router_consumes_the_urgent_queue_with_the_urgent_prefetch(
    session: FakeSession, router: Partitions
) -> None:
    settings = Settings()
    assert session.router.prefetch_of == {
        # what it hands to its own worker and what waits for it stay unacked on its channel: see router.py
        "snapworker.requests": 3 * settings.prefetch,
        "snapworker.requests.urgent": settings.urgent_prefetch,
    }


async def test_a_request_of_the_urgent_queue_goes_to_the_urgent_twin_of_its_partition(
    session: FakeSession, router: Partitions
) -> None:
    await session.router.deliver(request(1), queue="snapworker.requests.urgent")
    await until_idle()
    assert forwarded_to(session) == [urgent_queue(P1)]


async def test_a_request_with_amqp_priority_9_on_the_request_queue_goes_to_the_urgent_twin(
    session: FakeSession, router: Partitions
) -> None:
    await session.router.deliver(request(1, priority=9))
    await until_idle()
    assert forwarded_to(session) == [urgent_queue(P1)]


async def test_a_request_marked_urgent_in_its_body_goes_to_the_urgent_twin(
    session: FakeSession, router: Partitions
) -> None:
    await session.router.deliver(request(1, body=urgent_body("urgent")))
    await until_idle()
    assert forwarded_to(session) == [urgent_queue(P1)]


async def test_the_body_saying_normal_wins_over_amqp_priority_9(session: FakeSession, router: Partitions) -> None:
    await session.router.deliver(request(1, body=urgent_body("normal"), priority=9))
    await until_idle()
    assert forwarded_to(session) == [P1]


async def test_a_request_without_priority_goes_to_its_partition_as_before(
    session: FakeSession, router: Partitions
) -> None:
    await session.router.deliver(request(1, priority=4))
    await session.router.deliver(request(2))
    await until_idle()
    assert forwarded_to(session) == [P1, P1]


async def test_the_urgent_queues_requests_overtake_the_backlog_the_router_holds(
    session: FakeSession, router: Partitions
) -> None:
    for tag in range(1, 1201):  # more than two forward groups of backlog received first
        await session.router.deliver(request(tag))
    await session.router.deliver(request(1201), queue="snapworker.requests.urgent")
    await until_idle()
    assert [o.queue for o in session.forwarded[0]] == [urgent_queue(P1)]
    assert sum(len(group) for group in session.forwarded) == 1201


async def test_an_urgent_request_that_overtook_the_backlog_is_acked_alone(
    session: FakeSession, router: Partitions
) -> None:
    # a multiple ack of its tag would ack the backlog received before it, not forwarded yet
    for tag in range(1, 11):
        await session.router.deliver(request(tag))
    await session.router.deliver(request(11), queue="snapworker.requests.urgent")
    await until_idle()
    assert session.router.settled == [("ack", 11, False), ("ack", 10, True)]


async def test_the_router_is_not_attached_once_the_broker_cancels_its_urgent_consumer(
    session: FakeSession, router: Partitions
) -> None:
    assert router.attached()
    del session.router.consumers[session.router.tag_of["snapworker.requests.urgent"]]
    assert not router.attached()
