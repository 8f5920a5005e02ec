"""The sender task: a call is asked for only when the core has a batch to send, and cut once it is granted."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, RateLimiter
from snapworker.core import Batch, BatchingCore, MergeKey, Outcome
from snapworker.domain.jobs import CreatedJob
from snapworker.runtime.calls import BatchCaller
from snapworker.runtime.sender import Sender
from tests.core.helpers import request


class FakeApi:
    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.calls: list[tuple[str, ...]] = []

    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        marker: str | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> CreatedJob:
        if grant is not None:
            self.limiter.release()
        self.calls.append(tuple(desktop_ids))
        return CreatedJob(f"job-{len(self.calls)}", None)


class Harness:
    def __init__(self, core: BatchingCore, limiter: RateLimiter, may_send: asyncio.Event | None = None) -> None:
        self.core, self.limiter = core, limiter
        self.api = FakeApi(limiter)
        self.wake = asyncio.Event()
        self.outcomes: list[tuple[Batch, Outcome]] = []
        self.answered = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.sender = Sender(
            core,
            limiter,
            BatchCaller(self.api, max_extra_calls=0),
            wake=self.wake,
            deadline_s=60.0,
            spawn=self.spawn,
            on_cut=lambda batch: None,
            on_outcome=self.on_outcome,
            may_send=may_send,
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    async def on_outcome(self, batch: Batch, outcome: Outcome) -> None:
        self.core.complete(batch.id, outcome, 0.0)
        self.outcomes.append((batch, outcome))
        self.answered.set()


async def test_a_batch_is_cut_when_its_call_is_granted_and_carries_what_arrived_meanwhile() -> None:
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=0.5, burst=1, max_concurrency=4)
    await limiter.acquire("someone else")  # the bucket is empty: the next call waits about 2 s
    h = Harness(BatchingCore(100, 0.0), limiter)
    h.core.submit("t1", request("p1", "a"), "r1", None, loop.time())
    runner = asyncio.create_task(h.sender.run())
    await asyncio.sleep(0.2)  # the sender now waits for its call
    h.core.submit("t2", request("p1", "b"), "r2", None, loop.time())
    async with asyncio.timeout(10):
        await h.answered.wait()
    runner.cancel()
    assert h.api.calls == [("a", "b")]


async def test_a_granted_call_is_released_when_what_was_pending_left_meanwhile() -> None:
    loop = asyncio.get_running_loop()
    limiter = RateLimiter(rate=2.0, burst=1, max_concurrency=4)
    await limiter.acquire("someone else")
    limiter.release()
    h = Harness(BatchingCore(100, 0.0), limiter)
    h.core.submit("t1", request("p1", "a"), "r1", None, loop.time())
    runner = asyncio.create_task(h.sender.run())
    await asyncio.sleep(0.1)  # waiting for its call (about 0.5 s)
    h.core.drop(["t1"])  # the session was lost: the request is back in the queue
    await asyncio.sleep(1.0)
    runner.cancel()
    assert h.api.calls == []
    assert limiter.in_flight == 0


async def test_no_batch_is_cut_while_sending_is_paused_and_the_pending_go_on_resume() -> None:
    loop = asyncio.get_running_loop()
    may_send = asyncio.Event()  # clear: the API refuses the credential
    h = Harness(BatchingCore(100, 0.0), RateLimiter(rate=100, burst=10, max_concurrency=4), may_send)
    h.core.submit("t1", request("p1", "a"), "r1", None, loop.time())
    runner = asyncio.create_task(h.sender.run())
    await asyncio.sleep(0.1)
    assert h.api.calls == []
    assert h.core.buffered_desktops == 1
    may_send.set()
    async with asyncio.timeout(10):
        await h.answered.wait()
    runner.cancel()
    assert h.api.calls == [("a",)]
