"""The settler: settlements in decision order, multiple acks where they are safe, and nothing settled kept."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import cast

import aiormq
import pytest

from snapworker.amqp.settler import Settler


class Held:
    """A delivery with a body, as the worker holds it (the settler sees only its tag and whether it is settled)."""

    __slots__ = ("__weakref__", "body", "settled", "tag")

    def __init__(self, tag: int, body: bytes = b"") -> None:
        self.tag = tag
        self.settled = False
        self.body = body


class FakeChannel:
    """Records the settlement frames in the order they are queued."""

    def __init__(self) -> None:
        self.is_closed = False
        self.frames: list[tuple[str, int, bool]] = []

    async def basic_ack(self, tag: int, multiple: bool = False, wait: bool = True) -> None:
        self.frames.append(("ack", tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True) -> None:
        self.frames.append(("requeue" if requeue else "reject", tag, multiple))

    async def basic_qos(self, *, prefetch_count: int) -> None:
        pass


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


@pytest.fixture
def settler(channel: FakeChannel) -> Settler:
    return Settler(lambda: cast(aiormq.Channel, channel), asyncio.Event(), lambda exc: None)


def holding(settler: Settler, tags: range) -> list[Held]:
    deliveries = [Held(tag) for tag in tags]
    for delivery in deliveries:
        settler.hold(delivery)
    return deliveries


async def test_the_oldest_deliveries_acked_together_go_in_one_multiple_ack(
    settler: Settler, channel: FakeChannel
) -> None:
    held = holding(settler, range(1, 6))
    settler.decide(held[:3], "ack")
    await settler.sent(1)
    assert channel.frames == [("ack", 3, True)]


async def test_an_ack_behind_an_unsettled_delivery_is_sent_alone(settler: Settler, channel: FakeChannel) -> None:
    held = holding(settler, range(1, 4))
    settler.decide([held[2]], "ack")
    await settler.sent(1)
    assert channel.frames == [("ack", 3, False)]


async def test_a_multiple_ack_never_covers_an_unsettled_delivery(settler: Settler, channel: FakeChannel) -> None:
    held = holding(settler, range(1, 4))
    settler.decide([held[0], held[2]], "ack")
    await settler.sent(1)
    assert channel.frames == [("ack", 1, True), ("ack", 3, False)]


async def test_once_the_oldest_is_settled_one_multiple_ack_covers_what_was_acked_behind_it(
    settler: Settler, channel: FakeChannel
) -> None:
    held = holding(settler, range(1, 5))
    settler.decide(held[1:3], "ack")
    await settler.sent(1)
    settler.decide([held[0]], "ack")
    settler.decide([held[3]], "ack")
    await settler.sent(1)
    assert channel.frames[2:] == [("ack", 4, True)]


async def test_a_requeue_is_sent_before_a_multiple_ack_that_spans_its_tag(
    settler: Settler, channel: FakeChannel
) -> None:
    held = holding(settler, range(1, 4))
    settler.decide([held[1]], "requeue")
    settler.decide([held[0], held[2]], "ack")
    await settler.sent(1)
    assert channel.frames == [("requeue", 2, False), ("ack", 3, True)]


async def test_unsettled_lists_what_is_not_settled_in_delivery_order(settler: Settler) -> None:
    held = holding(settler, range(1, 6))
    settler.decide([held[0], held[3]], "ack")
    assert settler.unsettled() == [held[1], held[2], held[4]]


async def test_deliveries_settled_behind_a_long_held_one_are_not_kept(settler: Settler) -> None:
    # One request held for long (a slow batch), 10,000 later ones answered and acked meanwhile: the settler keeps
    # the one it still has to settle, not the others (their bodies would pile up with throughput x hold time).
    long_held = Held(1, b"x" * 1024)
    settler.hold(long_held)
    alive: list[weakref.ref[Held]] = []
    for start in range(2, 10_002, 100):
        batch = [Held(tag, b"x" * 1024) for tag in range(start, start + 100)]
        for delivery in batch:
            settler.hold(delivery)
        settler.decide(batch, "ack")
        await settler.sent(1)
        alive += [weakref.ref(d) for d in batch]
        del batch, delivery
    gc.collect()
    assert sum(ref() is not None for ref in alive) == 0
    assert settler.unsettled() == [long_held]
