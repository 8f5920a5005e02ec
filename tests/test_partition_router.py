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

from snapworker.amqp.partitioning import ROUTER_MADE_ID
from snapworker.amqp.partitions import Partitions
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.session import AmqpSession
from snapworker.errors import BrokerError
from snapworker.settings import Settings

Callback = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]


class FakeRouterChannel:
    """The router's channel: records its consumer and the settlements sent on it."""

    def __init__(self) -> None:
        self.is_closed = False
        self.consumers: dict[str, Callback] = {}
        self.settled: list[tuple[str, int, bool]] = []

    async def basic_qos(self, *, prefetch_count: int) -> None:
        pass

    async def basic_consume(self, queue: str, callback: Callback, no_ack: bool = False) -> spec.Basic.ConsumeOk:
        self.consumers["router"] = callback
        return spec.Basic.ConsumeOk(consumer_tag="router")

    async def basic_cancel(self, tag: str) -> None:
        self.consumers.pop(tag, None)

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.settled.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        self.settled.append(("nack", tag, multiple))

    async def deliver(self, message: DeliveredMessage) -> None:
        await self.consumers["router"](message)


class FakeSession:
    """The parts of AmqpSession the router uses; ``forward`` records what it is given and confirms it all.

    Like the real publish path (publish.py), ``forward`` gives a message without message_id a random one, written
    into the properties it was handed: returns are matched by message_id.
    """

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.consumer_lock = asyncio.Lock()
        self.router = FakeRouterChannel()
        self.forwarded: list[list[Outgoing]] = []

    async def open_channel(self) -> FakeRouterChannel:
        return self.router

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
    # the claimer never runs: its first step is an hour away
    partitions = Partitions(cast(AmqpSession, session), Settings(partitions=4), claim_interval_s=3600.0)
    await partitions.start()
    yield partitions
    await partitions.stop(timeout_s=1.0)


def request(tag: int, *, message_id: str | None = None, body: bytes | None = None) -> DeliveredMessage:
    body = body if body is not None else json.dumps({"project_id": "p1", "desktop_ids": [f"d{tag}"]}).encode()
    properties = spec.Basic.Properties(content_type="application/json", delivery_mode=2, message_id=message_id)
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
