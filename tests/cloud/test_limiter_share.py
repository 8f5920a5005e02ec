"""A fleet without a shared budget: each worker's limiter allows its share of RATE_LIMIT (RateLimiter.share)."""

from __future__ import annotations

from tests.cloud.test_limiter import FakeTime, Recorder, make


async def test_a_share_lowers_the_rate_at_once() -> None:
    limiter = make(FakeTime(), rate=1.5)
    limiter.share(3)
    assert limiter.max_rate == 0.5
    assert limiter.rate == 0.5


async def test_calls_are_spaced_by_the_share() -> None:
    time = FakeTime()
    limiter = make(time, rate=3.0, burst=1)
    limiter.share(3)
    recorder = Recorder(limiter, time)
    recorder.start("p", 3)
    await time.advance(10.0)
    assert recorder.times() == [0.0, 1.0, 2.0]  # 1 call a second, not 3


async def test_recovery_never_exceeds_the_share() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0, recovery_period_s=1.0, recovery_step=3.0)
    limiter.share(2)
    limiter.on_throttle(0.0)
    await time.advance(100.0)
    assert limiter.rate == 5.0


async def test_a_wider_share_is_taken_up_by_recovery() -> None:
    time = FakeTime()
    limiter = make(time, rate=10.0, recovery_period_s=1.0, recovery_step=1.0)
    limiter.share(2)
    limiter.share(1)  # the other worker left
    assert limiter.max_rate == 10.0
    await time.advance(100.0)
    assert limiter.rate == 10.0


async def test_a_lone_worker_keeps_the_whole_rate() -> None:
    limiter = make(FakeTime(), rate=1.5)
    limiter.share(1)
    assert limiter.rate == limiter.max_rate == 1.5
