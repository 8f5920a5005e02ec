"""Supervised background loops, on a fake clock: no test here sleeps for real."""

from __future__ import annotations

import asyncio
import logging

import pytest

from snapworker.runtime.supervisor import Supervisor
from tests.cloud.test_limiter import FakeTime, settle


class Flaky:
    """A loop that raises on each of its first ``crashes`` runs, then runs until cancelled."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self.cancelled = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"crash {self.runs}")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def make(time: FakeTime, **kw: float) -> Supervisor:
    return Supervisor(sleep=time.sleep, clock=time.clock, **kw)


async def test_a_crashed_loop_is_restarted_after_the_first_backoff() -> None:
    time = FakeTime()
    supervisor = make(time, initial_s=0.5)
    loop = Flaky(crashes=1)
    supervisor.start("send loop", loop.run)
    await time.advance(0.49)
    assert loop.runs == 1
    await time.advance(0.01)
    assert (loop.runs, supervisor.restarts("send loop")) == (2, 1)
    await supervisor.close()


async def test_the_backoff_doubles_per_crash_up_to_its_ceiling() -> None:
    time = FakeTime()
    supervisor = make(time, initial_s=0.5, max_s=2.0)
    loop = Flaky(crashes=5)
    supervisor.start("send loop", loop.run)
    starts: list[float] = []
    seen = 1
    for _ in range(100):
        await time.advance(0.25)
        if loop.runs > seen:
            seen = loop.runs
            starts.append(time.now - 1000.0)
    assert starts == [0.5, 1.5, 3.5, 5.5, 7.5]  # waits of 0.5, 1, 2, then 2 and 2: capped
    await supervisor.close()


async def test_the_backoff_starts_again_after_a_healthy_run() -> None:
    time = FakeTime()
    supervisor = make(time, initial_s=0.5, healthy_s=10.0)
    crash = asyncio.Event()
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("early")
        await crash.wait()  # the fourth run lasts until the test says so: healthy, then one more crash
        crash.clear()
        raise RuntimeError("late")

    supervisor.start("tracking", run)
    await time.advance(0.5 + 1.0 + 2.0)  # three quick crashes: the next wait would be 4 s
    assert runs == 4
    await time.advance(20.0)
    crash.set()
    await settle()
    assert supervisor.problems() == {"tracking": "tracking died: RuntimeError('late'); restarting in 0.5 s"}
    await supervisor.close()


async def test_problems_names_the_reason_while_the_loop_is_down_and_clears_after_the_restart() -> None:
    time = FakeTime()
    supervisor = make(time, initial_s=0.5)
    supervisor.start("send loop", Flaky(crashes=2).run)
    await settle()
    assert supervisor.problems() == {"send loop": "send loop died: RuntimeError('crash 1'); restarting in 0.5 s"}
    await time.advance(0.5)
    assert supervisor.problems() == {"send loop": "send loop died: RuntimeError('crash 2'); restarting in 1.0 s"}
    await time.advance(1.0)
    assert supervisor.problems() == {}
    await supervisor.close()


async def test_a_crash_is_logged_with_its_exception(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    supervisor = make(time)
    with caplog.at_level(logging.ERROR, logger="snapworker.supervisor"):
        supervisor.start("send loop", Flaky(crashes=1).run)
        await settle()
    [record] = caplog.records
    assert record.exc_info is not None
    assert repr(record.exc_info[1]) == "RuntimeError('crash 1')"
    await supervisor.close()


async def test_a_loop_that_ends_normally_is_restarted_too() -> None:
    time = FakeTime()
    supervisor = make(time, initial_s=0.5)
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1

    supervisor.start("progress", run)
    await settle()
    assert supervisor.problems() == {"progress": "progress ended; restarting in 0.5 s"}
    await time.advance(0.5)
    assert runs == 2
    await supervisor.close()


async def test_a_loop_not_to_be_restarted_stays_reported_as_down() -> None:
    time = FakeTime()
    supervisor = make(time)
    loop = Flaky(crashes=1)
    supervisor.start("send loop", loop.run, restart=False)
    await time.advance(60.0)
    assert loop.runs == 1
    assert supervisor.problems() == {"send loop": "send loop died: RuntimeError('crash 1'); not restarted"}
    await supervisor.close()


async def test_close_cancels_every_loop_and_restarts_none() -> None:
    time = FakeTime()
    supervisor = make(time)
    loops = [Flaky(crashes=0), Flaky(crashes=0)]
    supervisor.start("a", loops[0].run)
    supervisor.start("b", loops[1].run)
    await settle()
    await supervisor.close()
    await time.advance(60.0)
    assert [(loop.runs, loop.cancelled) for loop in loops] == [(1, 1), (1, 1)]
    assert supervisor.problems() == {}


async def test_close_calls_off_a_pending_restart() -> None:
    time = FakeTime()
    supervisor = make(time)
    loop = Flaky(crashes=1)
    supervisor.start("a", loop.run)
    await settle()
    await supervisor.close()
    await time.advance(60.0)
    assert loop.runs == 1


async def test_a_loop_that_swallows_the_cancellation_of_close_is_not_restarted() -> None:
    time = FakeTime()
    supervisor = make(time)
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return  # as a client library sometimes does

    supervisor.start("a", run)
    await settle()
    await supervisor.close()
    await time.advance(60.0)
    assert runs == 1


async def test_a_cancelled_close_still_leaves_every_loop_cancelled_and_a_second_close_waits_for_them() -> None:
    time = FakeTime()
    supervisor = make(time)
    release = asyncio.Event()
    ended = asyncio.Event()
    runs = 0

    async def slow_to_end() -> None:
        nonlocal runs
        runs += 1
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # its cleanup takes a while
            ended.set()

    supervisor.start("a", slow_to_end)
    await settle()
    closing = asyncio.create_task(supervisor.close())
    await settle()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    second = asyncio.create_task(supervisor.close())
    await settle()
    assert not second.done()  # the loop is still ending
    release.set()
    await settle()
    assert second.done()
    assert ended.is_set()
    await time.advance(60.0)
    assert runs == 1


async def test_retire_lets_a_loop_end_on_its_own_without_a_restart() -> None:
    time = FakeTime()
    supervisor = make(time)
    stop = asyncio.Event()
    runs = 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        await stop.wait()

    supervisor.start("tracking", run)
    await settle()
    retiring = asyncio.create_task(supervisor.retire("tracking"))
    await settle()
    assert not retiring.done()
    stop.set()
    await settle()
    assert retiring.done()
    await time.advance(60.0)
    assert (runs, supervisor.problems()) == (1, {})
    await supervisor.close()


async def test_retire_calls_off_a_pending_restart_at_once() -> None:
    time = FakeTime()
    supervisor = make(time)
    loop = Flaky(crashes=1)
    supervisor.start("tracking", loop.run)
    await settle()
    await asyncio.wait_for(supervisor.retire("tracking"), timeout=5)
    await time.advance(60.0)
    assert (loop.runs, supervisor.problems()) == (1, {})
    await supervisor.close()


async def test_a_second_loop_of_the_same_name_is_refused_while_the_first_runs() -> None:
    time = FakeTime()
    supervisor = make(time)
    supervisor.start("a", Flaky(crashes=0).run)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("a", Flaky(crashes=0).run)
    await supervisor.close()


async def test_stop_cancels_one_loop_without_a_restart_and_leaves_the_others() -> None:
    time = FakeTime()
    supervisor = make(time)
    stopped, other = Flaky(crashes=0), Flaky(crashes=0)
    supervisor.start("limiter", stopped.run)
    supervisor.start("send loop", other.run)
    await settle()
    await supervisor.stop("limiter")
    await time.advance(60.0)
    assert [(loop.runs, loop.cancelled) for loop in (stopped, other)] == [(1, 1), (1, 0)]
    assert supervisor.problems() == {}
    await supervisor.close()
