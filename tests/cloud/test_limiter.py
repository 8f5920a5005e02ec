"""The async limiter, on a fake clock: no test here sleeps for real."""

from __future__ import annotations

import asyncio
import heapq
import random

import pytest

from snapworker.cloud.limiter import Grant, RateLimiter
from snapworker.settings import Settings

T0 = 1000.0


async def settle() -> None:
    """Let every task that can run, run (several hops: future -> task -> next await)."""
    for _ in range(50):
        await asyncio.sleep(0)


class FakeTime:
    """A clock that moves only when the test says so; sleepers wake in due order as it passes them."""

    def __init__(self, start: float = T0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(seconds, 0.0), self._seq, future))
        self._seq += 1
        await future

    async def advance(self, seconds: float) -> None:
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, future = heapq.heappop(self._sleepers)
            if future.done():  # its sleeper was cancelled
                continue
            self.now = max(self.now, due)
            future.set_result(None)
            await settle()
        self.now = target
        await settle()


class Recorder:
    """Tasks that each take one slot, note when and for which project, and hold it for ``hold`` (fake) s."""

    def __init__(self, limiter: RateLimiter, time: FakeTime, hold: float = 0.0) -> None:
        self.limiter, self.time, self.hold = limiter, time, hold
        self.grants: list[Grant] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, project_id: str, count: int = 1) -> None:
        for _ in range(count):
            self.tasks.append(asyncio.create_task(self._one(project_id)))

    async def _one(self, project_id: str) -> None:
        async with self.limiter.slot(project_id) as grant:
            self.grants.append(grant)
            if self.hold:
                await self.time.sleep(self.hold)

    def times(self) -> list[float]:
        return [round(g.granted_at - T0, 6) for g in self.grants]

    def projects(self) -> str:
        return "".join(g.project_id for g in self.grants)

    async def cancel_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def make(time: FakeTime, rate: float = 1.0, burst: int = 1, concurrency: int = 100, **kw: object) -> RateLimiter:
    return RateLimiter(rate, burst, concurrency, clock=time.clock, sleep=time.sleep, **kw)  # type: ignore[arg-type]


# -- rate and burst


async def test_the_burst_is_granted_at_once_and_the_next_call_waits() -> None:
    time = FakeTime()
    rec = Recorder(make(time, rate=1.0, burst=3), time)
    rec.start("a", 4)
    await settle()
    assert rec.times() == [0.0, 0.0, 0.0]
    await rec.cancel_all()


async def test_calls_after_the_burst_are_spaced_by_the_rate() -> None:
    time = FakeTime()
    rec = Recorder(make(time, rate=2.0, burst=1), time)
    rec.start("a", 5)
    await time.advance(10.0)
    assert rec.times() == [0.0, 0.5, 1.0, 1.5, 2.0]


async def test_peak_calls_in_any_one_second_stay_within_rate_plus_burst() -> None:
    time = FakeTime()
    rec = Recorder(make(time, rate=20.0, burst=5), time)
    rec.start("a", 200)
    for _ in range(100):
        await time.advance(0.1)
    times = rec.times()
    assert len(times) == 200
    peak = max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))
    assert 20 <= peak <= 25


async def test_at_most_max_concurrency_calls_are_in_flight() -> None:
    time = FakeTime()
    limiter = make(time, rate=100.0, burst=100, concurrency=2)
    rec = Recorder(limiter, time, hold=1.0)
    rec.start("a", 5)
    await settle()
    assert (limiter.in_flight, limiter.queued, len(rec.grants)) == (2, 3, 2)
    await time.advance(1.0)
    assert (limiter.in_flight, len(rec.grants)) == (2, 4)
    await time.advance(2.0)
    assert (limiter.in_flight, limiter.queued, len(rec.grants)) == (0, 0, 5)


async def test_time_spent_waiting_is_summed() -> None:
    time = FakeTime()
    limiter = make(time, rate=1.0, burst=1)
    rec = Recorder(limiter, time)
    rec.start("a", 3)
    await time.advance(5.0)
    assert [g.waited_s for g in rec.grants] == [0.0, 1.0, 2.0]
    assert limiter.wait_seconds_total == pytest.approx(3.0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    time = FakeTime()
    limiter = make(time, rate=1.0, burst=1)
    rec = Recorder(limiter, time)
    rec.start("a", 3)
    await settle()
    rec.tasks[1].cancel()
    await settle()
    assert limiter.queued == 1
    await time.advance(1.0)
    assert len(rec.grants) == 2
    assert limiter.in_flight == 0


# -- adaptive


async def test_a_throttle_halves_the_rate() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0)
    limiter.on_throttle(1.0)
    assert limiter.rate == 5.0
    assert limiter.throttles_total == 1


async def test_repeated_throttles_stop_at_the_floor_rate() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0)
    for _ in range(20):
        limiter.on_throttle(0.0)
    assert limiter.rate == pytest.approx(1 / 60)


async def test_a_throttle_pauses_every_call_for_retry_after() -> None:
    time = FakeTime()
    limiter = make(time, rate=100.0, burst=10)
    assert limiter.on_throttle(3.0) == 3.0
    rec = Recorder(limiter, time)
    rec.start("a")
    rec.start("b")
    await time.advance(2.9)
    assert rec.grants == []
    await time.advance(0.2)
    assert rec.times()[0] == pytest.approx(3.0)


async def test_a_throttle_without_retry_after_pauses_two_to_five_seconds() -> None:
    time = FakeTime()
    pauses = [make(time, rng=random.Random(seed)).on_throttle(None) for seed in range(50)]
    assert all(2.0 <= p <= 5.0 for p in pauses)
    assert len(set(pauses)) > 1  # jittered


async def test_the_pause_is_capped() -> None:
    time = FakeTime()
    assert make(time, max_pause_s=60.0).on_throttle(3600.0) == 60.0


async def test_throttles_of_calls_granted_before_the_cut_do_not_cut_again() -> None:
    time = FakeTime()
    limiter = make(time, rate=8.0, burst=8)
    first, second = await limiter.acquire("a"), await limiter.acquire("a")
    limiter.on_throttle(0.0, sent_at=first.granted_at)
    limiter.on_throttle(0.0, sent_at=second.granted_at)
    assert limiter.rate == 4.0
    await time.advance(1.0)
    third = await limiter.acquire("a")
    limiter.on_throttle(0.0, sent_at=third.granted_at)
    assert limiter.rate == 2.0


async def test_the_rate_climbs_back_additively_after_quiet_periods() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0, recovery_period_s=10.0, recovery_step=1.0)
    limiter.on_throttle(2.0)  # 5/s; the quiet period starts when the 2 s pause ends
    await time.advance(11.9)
    assert limiter.rate == 5.0
    await time.advance(0.1)  # 10 s after the pause
    assert limiter.rate == 6.0
    await time.advance(25.0)  # two more whole periods
    assert limiter.rate == 8.0


async def test_recovery_never_exceeds_the_configured_rate() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0, recovery_period_s=1.0, recovery_step=3.0)
    limiter.on_throttle(0.0)
    await time.advance(100.0)
    assert limiter.rate == 10.0


async def test_a_throttle_restarts_the_quiet_period() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0, recovery_period_s=10.0, recovery_step=1.0)
    limiter.on_throttle(0.0)
    await time.advance(9.0)
    limiter.on_throttle(0.0)  # 2.5/s; calm restarts now
    await time.advance(9.0)
    assert limiter.rate == 2.5


async def test_a_long_wait_at_a_cut_rate_ends_early_when_the_rate_recovers() -> None:
    time = FakeTime()
    limiter = make(time, rate=1.0, min_rate=0.01, decrease_factor=0.01, recovery_period_s=10.0, recovery_step=1.0)
    limiter.on_throttle(0.0)  # 0.01/s: after the one probe token, the next is 100 s away
    rec = Recorder(limiter, time)
    rec.start("probe")
    rec.start("a")
    await time.advance(30.0)
    # 10 s of calm restore 1/s; 0.1 token dripped by then, so 0.9 s more.
    assert rec.times() == [0.0, pytest.approx(10.9)]


# -- fairness


async def test_a_busy_project_cannot_starve_another_project() -> None:
    time = FakeTime()
    rec = Recorder(make(time, rate=10.0, burst=1), time)
    rec.start("a", 50)
    await settle()
    rec.start("b")
    await time.advance(10.0)
    order = rec.projects()
    assert len(order) == 51
    assert "b" in order[:3]  # granted within the next two grants after it queued


async def test_projects_with_waiters_take_turns() -> None:
    time = FakeTime()
    rec = Recorder(make(time, rate=10.0, burst=1), time)
    rec.start("a", 3)
    rec.start("b", 3)
    rec.start("c", 1)
    await time.advance(2.0)
    # a's first call found no one waiting; then a, b and c take turns until only b is left
    assert rec.projects() == "a" + "abcab" + "b"


def test_from_settings_uses_rate_burst_and_concurrency() -> None:
    settings = Settings(rate_limit=3.0, rate_burst=7, max_concurrency=4)
    limiter = RateLimiter.from_settings(settings, clock=lambda: 0.0)
    assert (limiter.max_rate, limiter.rate) == (3.0, 3.0)
