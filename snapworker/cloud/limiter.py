"""The async rate limiter in front of batch-create: rate + burst, concurrency, adaptive, fair between projects.

Huawei's gateway counts calls per user (credential) and API, not per project, so one limiter serves every
project called with one credential. A call may start when all of these hold:

* a token is in the bucket (``rate`` per second, ``burst`` saved up: at most ``rate + burst`` calls in any one
  second);
* fewer than ``max_concurrency`` calls are in flight;
* no throttle pause is running.

**Adaptive** (AIMD): a throttle answer (:meth:`RateLimiter.on_throttle`) multiplies the rate by
``decrease_factor`` (never below ``min_rate``), empties the bucket and pauses every call for Retry-After, or a
jittered ``pause_range_s`` when the answer had none, doubled for each overload that follows the last pause within
a recovery period (see :mod:`snapworker.cloud.pause`). Each ``recovery_period_s`` without a throttle after the
pause then adds ``recovery_step`` per second back, up to the configured rate. Throttles of calls granted before
the last cut do not cut again: they answer for the old rate, and eight calls in flight meeting one overload
must not divide the rate by 256.

**Fair**: each project with waiters has its own FIFO queue and grants go round-robin over those queues, so a
project with 50 queued calls delays another project's first call by at most one grant.

Time is injected (``clock`` and ``sleep``): the tests move a fake clock instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

from snapworker.cloud.bucket import TokenBucket
from snapworker.cloud.pause import ThrottlePause
from snapworker.cloud.waiters import Grant, Waiters
from snapworker.settings import Settings

__all__ = ["Clock", "Grant", "Limiter", "RateLimiter", "Sleep", "log_throttle_episode"]

log = logging.getLogger("snapworker.limiter")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Limiter(Protocol):
    """What callers need of a rate limiter: this module's RateLimiter, or the fleet's SharedRateLimiter."""

    async def acquire(self, project_id: str) -> Grant: ...
    def release(self) -> None: ...
    def on_throttle(self, retry_after_s: float | None = None, *, sent_at: float | None = None) -> float: ...

    @property
    def max_rate(self) -> float: ...
    @property
    def rate(self) -> float: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def wait_seconds_total(self) -> float: ...
    @property
    def throttles_total(self) -> int: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def fallbacks_total(self) -> int: ...
    async def close(self) -> None: ...


def log_throttle_episode(rate: float, max_rate: float, pause_s: float, *, scope: str = "") -> None:
    """One WARNING per overload (not per throttled try): the rate it was cut to and the pause."""
    log.warning(
        "API throttled: %srate cut to %.2f calls/s (of %.2f), every call paused %.1f s; it recovers step by step",
        scope,
        rate,
        max_rate,
        pause_s,
        extra={"rate": round(rate, 4), "max_rate": max_rate, "pause_s": round(pause_s, 3)},
    )


class RateLimiter:
    """See the module docstring. Use ``async with limiter.slot(project_id) as grant:`` around one call."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_concurrency: int,
        *,
        min_rate: float = 1 / 60,
        decrease_factor: float = 0.5,
        recovery_period_s: float = 10.0,
        recovery_step: float | None = None,
        pause_range_s: tuple[float, float] = (2.0, 5.0),
        max_pause_s: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be between 0 and 1, got {decrease_factor}")
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_rate = rate
        self._configured_rate = rate
        self._min_rate = min(min_rate, rate)
        self._decrease_factor = decrease_factor
        self._recovery_period_s = recovery_period_s
        self._recovery_step = recovery_step if recovery_step is not None else rate / 10
        self._pause = ThrottlePause(pause_range_s, max_pause_s=max_pause_s, calm_s=recovery_period_s, rng=self._rng)
        self._max_concurrency = max_concurrency

        now = clock()
        self._bucket = TokenBucket(rate, burst, now)
        self._calm_since = now  # recovery steps count from here: the end of the latest throttle pause
        self._last_cut = -math.inf  # when the rate was last cut
        # project -> its waiters, FIFO; the dict's order is the round-robin order (served project goes last).
        self._waiters = Waiters()
        self._in_flight = 0
        self._timer: asyncio.Task[None] | None = None
        self._timer_due = math.inf
        self._wait_seconds_total = 0.0
        self._throttles_total = 0

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RateLimiter:
        """RATE_LIMIT, RATE_BURST and MAX_CONCURRENCY from ``settings``; ``kwargs`` as for the constructor."""
        return cls(settings.rate_limit, settings.rate_burst, settings.max_concurrency, **kwargs)

    def share(self, workers: int) -> None:
        """Allow 1/``workers`` of the configured rate from now on: that many workers spend one credential without a
        budget they share (no REDIS_URL). A rate above the new share is lowered at once; a wider share (a worker
        left) is taken up as a recovery after a throttle, up to it and never past it."""
        max_rate = self._configured_rate / max(1, workers)
        if max_rate == self._max_rate:
            return
        self._max_rate = max_rate
        self._min_rate = min(self._min_rate, max_rate)
        if self._bucket.rate > max_rate:
            self._bucket.set_rate(max_rate, self._clock())

    # -- metrics
    @property
    def max_rate(self) -> float:
        return self._max_rate

    @property
    def rate(self) -> float:
        """Calls per second allowed now (below ``max_rate`` after a throttle, until it recovers)."""
        self._recover(self._clock())
        return self._bucket.rate

    @property
    def paused_until(self) -> float:
        return self._bucket.blocked_until

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def wait_seconds_total(self) -> float:
        """Seconds calls have spent waiting for a grant, summed over calls."""
        return self._wait_seconds_total

    @property
    def throttles_total(self) -> int:
        return self._throttles_total

    @property
    def degraded(self) -> bool:
        """Never: a process-local limiter has nothing to fall back from (see SharedRateLimiter)."""
        return False

    @property
    def fallbacks_total(self) -> int:
        return 0

    async def close(self) -> None:
        """Stop the wake-up timer (nothing else to release)."""
        self._cancel_timer()

    # -- use
    @asynccontextmanager
    async def slot(self, project_id: str) -> AsyncIterator[Grant]:
        """Wait for this project's turn, then hold one of the ``max_concurrency`` places until the block ends."""
        grant = await self.acquire(project_id)
        try:
            yield grant
        finally:
            self.release()

    async def acquire(self, project_id: str) -> Grant:
        """Wait for a grant; pair with exactly one :meth:`release` (prefer :meth:`slot`)."""
        future = self._waiters.add(project_id, self._clock())
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as the caller gave up: the place goes to the next waiter
            else:
                self._waiters.forget(project_id, future)
                if not self._waiters:
                    self._cancel_timer()
            raise

    def release(self) -> None:
        """A granted call has finished (with any outcome)."""
        self._in_flight -= 1
        self._dispatch()

    def on_throttle(self, retry_after_s: float | None = None, *, sent_at: float | None = None) -> float:
        """A call was throttled: cut the rate (once per overload) and pause everyone. Returns the pause (s).

        ``sent_at`` is the throttled call's :attr:`Grant.granted_at`; without it every throttle cuts.
        """
        now = self._clock()
        self._throttles_total += 1
        new_overload = sent_at is None or sent_at > self._last_cut
        if new_overload:
            self._recover(now)
            self._bucket.set_rate(max(self._min_rate, self._bucket.rate * self._decrease_factor), now)
            self._last_cut = now
        pause = self._pause.pause(now, retry_after_s, new_overload=new_overload)
        if new_overload:
            log_throttle_episode(self._bucket.rate, self._max_rate, pause)
        self._bucket.block_until(now + pause, now)
        self._calm_since = max(self._calm_since, now + pause)
        self._cancel_timer()  # it may be due before the pause ends; dispatch sets the right one
        self._dispatch()
        return pause

    # -- internals
    def _recover(self, now: float) -> None:
        """Additive increase: one ``recovery_step`` per whole ``recovery_period_s`` of calm."""
        rate = self._bucket.rate
        if rate >= self._max_rate or now < self._calm_since + self._recovery_period_s:
            return
        steps = math.floor((now - self._calm_since) / self._recovery_period_s)
        self._calm_since += steps * self._recovery_period_s
        self._bucket.set_rate(min(self._max_rate, rate + steps * self._recovery_step), now)

    def _dispatch(self) -> None:
        """Grant every waiter that may go now, round-robin; if some must wait for time, set the timer."""
        now = self._clock()
        self._recover(now)
        while self._in_flight < self._max_concurrency:
            if not self._waiters:
                self._cancel_timer()
                return
            wait = self._bucket.try_take(now)
            if wait > 0:
                self._arm_timer(now, wait)
                return
            waited = self._waiters.grant(now, now)
            assert waited is not None  # someone was waiting: checked above, nothing awaited since
            self._in_flight += 1
            self._wait_seconds_total += waited
        # Full: the next release() dispatches again; no timer needed for that.

    def _arm_timer(self, now: float, wait: float) -> None:
        if self._bucket.rate < self._max_rate:
            # A long wait at a cut rate must not outlive the next recovery step, which shortens it.
            wait = min(wait, max(self._calm_since + self._recovery_period_s - now, 0.0))
        due = now + wait
        if self._timer is not None and not self._timer.done():
            if self._timer_due <= due:
                return
            self._timer.cancel()
        self._timer_due = due
        self._timer = asyncio.get_running_loop().create_task(self._wake(wait))

    async def _wake(self, wait: float) -> None:
        await self._sleep(wait)
        self._timer = None
        self._timer_due = math.inf
        self._dispatch()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = math.inf
