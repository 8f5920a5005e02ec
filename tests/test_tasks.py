"""Tasks that own deliveries: what a task still owns when it raises is failed, when it is cancelled requeued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from snapworker.amqp.session import Delivery
from snapworker.core.lifecycle import Lifecycle, State
from snapworker.runtime.tasks import WorkerTasks
from tests.guard_fakes import FakeSession


class Harness:
    def __init__(self) -> None:
        self.session = FakeSession()
        self.life = Lifecycle()
        self.failed: list[tuple[Delivery, str]] = []
        self.tasks = WorkerTasks(self.fail, self.life)

    def fail(self, deliveries: Sequence[Delivery], exc: BaseException) -> None:
        self.failed += [(d, str(exc)) for d in deliveries]

    def received(self, tag: int) -> Delivery:
        delivery = self.session.delivery(b"{}", tag=tag)
        self.life.receive(delivery, self.session, owner="intake")
        return delivery

    async def done(self) -> None:
        while pending := [t for t in self.tasks if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0)


async def test_a_task_that_raises_fails_what_it_still_owned() -> None:
    h = Harness()
    delivery = h.received(1)

    async def broken() -> None:
        raise RuntimeError("a bug")

    h.tasks.spawn(broken(), (delivery,))
    await h.done()
    assert h.failed == [(delivery, "a bug")]


async def test_a_task_that_raises_leaves_alone_what_it_passed_on() -> None:
    h = Harness()
    kept, passed = h.received(1), h.received(2)

    async def passes_one_on_then_breaks() -> None:
        h.life.move(passed, State.BATCHED, owner="core")
        raise RuntimeError("a bug")

    h.tasks.spawn(passes_one_on_then_breaks(), (kept, passed))
    await h.done()
    assert [d for d, _ in h.failed] == [kept]
    assert h.life.owner(passed) == "core"


async def test_a_cancelled_task_requeues_what_it_still_owned() -> None:
    h = Harness()
    delivery = h.received(1)

    async def waits_for_ever() -> None:
        await asyncio.Event().wait()

    h.tasks.spawn(waits_for_ever(), (delivery,))
    await asyncio.sleep(0)
    await h.tasks.settle_within(0.0)
    await asyncio.sleep(0)
    assert h.session.settled == [(delivery, "requeue")]
    assert h.failed == []
