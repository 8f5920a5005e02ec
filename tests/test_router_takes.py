"""The router hands a request of this worker's own partition straight to it, without the hop through the partition,
while the worker's window has room; it forwards only what another worker owns, what is urgent, and the overflow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from aiormq.abc import DeliveredMessage

from snapworker.amqp import router as router_module
from snapworker.amqp.partitioning import partition_of, partition_queue, urgent_queue
from snapworker.amqp.partitions import Partitions
from snapworker.amqp.session import AmqpSession
from snapworker.amqp.settler import Settler
from snapworker.settings import Settings
from tests.test_partition_router import FakeRouterChannel, FakeSession, forwarded_to, request, until_idle

P1 = partition_queue("snapworker.requests", partition_of(request(1).body, 4))  # the partition of project p1


class _Taken:
    """What the real session holds for a request it took: the router channel's tag, settled once."""

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.settled = False


class OwningSession(FakeSession):
    """A session that consumes ``owned`` partitions and holds at most ``window`` requests taken from the router."""

    def __init__(self, owned: set[str], window: int) -> None:
        super().__init__()
        self.owned = owned
        self.window = self.prefetch = window
        self.taken: list[_Taken] = []
        self.settler: Settler | None = None
        self.on_room: Callable[[], None] | None = None

    def consumes(self, queue: str) -> bool:
        return queue in self.owned

    def router_settler(self, channel: FakeRouterChannel, on_room: Callable[[], None]) -> Settler:
        self.settler = Settler(lambda: cast(Any, channel), self.lost, lambda exc: None)
        self.on_room = on_room
        return self.settler

    def takes_from_router(self, partition_queue: str) -> bool:
        return partition_queue in self.owned and self.taken_from_router < self.window

    @property
    def taken_from_router(self) -> int:
        return sum(not t.settled for t in self.taken)

    def take_from_router(self, message: DeliveredMessage, settler: Settler) -> None:
        taken = _Taken(message.delivery_tag or 0)
        settler.hold(taken)
        self.taken.append(taken)

    def answer(self, n: int) -> None:
        """The worker answers (acks) its ``n`` oldest taken requests still held."""
        assert self.settler is not None
        assert self.on_room is not None
        self.settler.decide([t for t in self.taken if not t.settled][:n], "ack")
        self.on_room()


async def started(session: OwningSession, *, claim_interval_s: float = 0.01) -> Partitions:
    # PREFETCH the window: up to PREFETCH (one window) wait for it in the router
    settings = Settings(partitions=4, prefetch=session.window, max_batch=1)
    router = Partitions(cast(AmqpSession, session), settings, claim_interval_s=claim_interval_s)
    await router.start()
    await asyncio.sleep(0.05)  # past the first claim step
    return router


@pytest.fixture
async def lone() -> AsyncIterator[tuple[OwningSession, Partitions]]:
    """A worker owning every partition, with a window of 3 requests."""
    session = OwningSession({partition_queue("snapworker.requests", p) for p in range(4)}, window=3)
    router = await started(session)
    yield session, router
    await router.stop(timeout_s=1.0)


async def test_a_request_of_an_owned_partition_is_taken_not_forwarded(lone: tuple[OwningSession, Partitions]) -> None:
    session, _ = lone
    await session.router.deliver(request(1))
    await until_idle()
    assert [t.tag for t in session.taken] == [1]
    assert session.forwarded == []


async def test_an_urgent_request_is_forwarded_to_its_urgent_twin_even_when_its_partition_is_owned(
    lone: tuple[OwningSession, Partitions],
) -> None:
    session, _ = lone
    await session.router.deliver(request(1, priority=9))
    await until_idle()
    assert forwarded_to(session) == [urgent_queue(P1)]
    assert session.taken == []


async def test_a_request_of_another_workers_partition_is_forwarded() -> None:
    session = OwningSession(set(), window=3)
    router = await started(session)
    await session.router.deliver(request(1))
    await until_idle()
    await router.stop(timeout_s=1.0)
    assert forwarded_to(session) == [P1]
    assert session.taken == []


async def test_requests_past_the_window_wait_and_are_taken_as_the_worker_answers(
    lone: tuple[OwningSession, Partitions],
) -> None:
    session, _ = lone
    for tag in range(1, 6):
        await session.router.deliver(request(tag))
    await until_idle()
    assert [t.tag for t in session.taken] == [1, 2, 3]
    session.answer(2)
    await until_idle()
    assert [t.tag for t in session.taken] == [1, 2, 3, 4, 5]
    assert session.forwarded == []


async def test_before_the_first_claim_requests_wait_and_then_go_to_their_owner() -> None:
    session = OwningSession({P1}, window=10)
    router = await started(session, claim_interval_s=0.2)
    await session.router.deliver(request(1))
    await until_idle()
    assert session.taken == []  # who owns what is not known yet
    assert session.forwarded == []
    await asyncio.sleep(0.4)
    await router.stop(timeout_s=1.0)
    assert [t.tag for t in session.taken] == [1]


async def test_past_one_window_waiting_the_oldest_waiting_requests_are_forwarded(
    lone: tuple[OwningSession, Partitions],
) -> None:
    # a window of 3 taken, 3 more waiting; the 2 beyond go to the partition, oldest first, so that the request
    # queue keeps moving (an urgent request behind them is seen) and memory holds two windows at most
    session, _ = lone
    for tag in range(1, 9):
        await session.router.deliver(request(tag))
    await until_idle()
    assert [t.tag for t in session.taken] == [1, 2, 3]
    assert [o.body for group in session.forwarded for o in group] == [request(t).body for t in (4, 5)]


async def test_stopping_returns_the_waiting_requests_to_the_queue() -> None:
    session = OwningSession({P1}, window=1)
    router = await started(session)
    for tag in range(1, 3):
        await session.router.deliver(request(tag))
    await until_idle()
    await router.stop(timeout_s=1.0)
    await until_idle()
    assert session.router.settled == [("nack", 2, False)]
    assert [t.tag for t in session.taken] == [1]


async def test_a_forwarded_request_is_acked_alone_while_an_older_taken_one_is_unanswered() -> None:
    # a multiple ack up to the forwarded one's tag would ack the taken request before the worker answered it
    session = OwningSession({P1}, window=1)
    router = await started(session)
    await session.router.deliver(request(1))  # taken
    await session.router.deliver(request(2))  # waiting: one window
    await session.router.deliver(request(3))  # past one window waiting: the oldest waiting one is forwarded
    await until_idle()
    assert [t.tag for t in session.taken] == [1]
    assert session.router.settled == [("ack", 2, False)]
    await router.stop(timeout_s=1.0)


async def test_a_request_that_waited_too_long_for_the_window_is_forwarded(
    lone: tuple[OwningSession, Partitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the window stays full while the partitions hold a backlog: a request must not wait on the router's channel
    # for all of it (the broker's consumer timeout would close the channel)
    monkeypatch.setattr(router_module, "_WAIT_MAX_S", 0.2)
    session, _ = lone
    for tag in range(1, 5):
        await session.router.deliver(request(tag))
    await until_idle()
    assert session.forwarded == []
    await asyncio.sleep(0.4)
    assert [t.tag for t in session.taken] == [1, 2, 3]
    assert [o.body for group in session.forwarded for o in group] == [request(4).body]


async def test_in_a_fleet_a_request_of_an_owned_partition_is_forwarded() -> None:
    # its partitions change hands while a fleet settles: a request taken would stay with the worker that took it
    session = OwningSession({P1}, window=3)
    session.router.routers = 2
    router = await started(session)
    await session.router.deliver(request(1))
    await until_idle()
    await router.stop(timeout_s=1.0)
    assert forwarded_to(session) == [P1]
    assert session.taken == []


async def test_a_fleet_seen_before_the_first_claim_ends_the_wait_for_it() -> None:
    # the router looks for other routers five times in its first interval: a fleet started at once gets its
    # backlog into the partitions before they are claimed, not one interval later
    session = OwningSession({P1}, window=3)
    session.router.routers = 2
    router = await started(session, claim_interval_s=1.0)
    await session.router.deliver(request(1))
    await asyncio.sleep(0.4)  # past the first look (0.15-0.25 s), before the first claim (0.75-1.25 s)
    await router.stop(timeout_s=1.0)
    assert forwarded_to(session) == [P1]
