"""One rate budget for a fleet: the token bucket and its AIMD state in Redis, shared by every worker.

:class:`SharedRateLimiter` has :class:`~snapworker.cloud.limiter.RateLimiter`'s public surface and semantics
(read its docstring), so a client takes either; :func:`build_limiter` picks one from the settings. Contract:

* **Shared**: the bucket (tokens, rate, throttle pause, ``last_cut``, ``calm_since``) is one Redis hash,
  ``snapworker:<budget>:<credential_id>`` (``rate``: batch-create's; ``read``: the reads', see
  :mod:`~snapworker.cloud.read_budget`), changed only by one Lua script: atomic, on Redis's clock (hosts with
  skewed clocks agree; the keys and scripts: :mod:`~snapworker.cloud.redis_bucket`). ``credential_id`` is a
  short sha256 of the AK or token, never the secret. Over any ``T`` seconds the whole fleet gets at most
  ``burst + rate * T`` grants. Idle, the key expires.
* **AIMD, fleet-wide**: a throttle anywhere cuts the shared rate once per overload (shared grants carry
  ``granted_at`` in Redis time, so a call granted before the last cut does not cut again) and pauses every
  worker; calm periods add the rate back. Concurrency and the waiting queue stay in the process.
* **Waiting**: one Redis round-trip per attempt; "wait W s" is slept with a little jitter, never polled.
* **Fallback**: when Redis errs or does not answer (short timeouts, no retries), calls go on under a local
  RateLimiter at this process's share, ``rate / live workers`` as last seen in Redis: ``degraded`` is True, a
  WARNING is logged and ``fallbacks_total`` counted once per episode. Redis is probed every ``heartbeat_s`` and
  used again once it answers (INFO). Live workers: each limiter heartbeats its id into its budget's sorted set
  (``snapworker:workers:<credential_id>`` for batch-create's), scored by Redis time; stale ids are pruned.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import os
import random
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol, TypeVar

from snapworker.cloud.limiter import RateLimiter, log_throttle_episode
from snapworker.cloud.pause import ThrottlePause
from snapworker.cloud.redis_bucket import RedisBucket
from snapworker.cloud.waiters import Grant, Waiters
from snapworker.errors import ConfigError
from snapworker.settings import Settings, redact_url

__all__ = ["Loops", "SharedRateLimiter", "build_limiter", "credential_id", "settings_credential_id"]

log = logging.getLogger("snapworker.cloud")

_T = TypeVar("_T")


def credential_id(secret: str) -> str:
    """A short, stable, one-way id for a credential: names its keys without revealing it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def settings_credential_id(settings: Settings) -> str:
    """The :func:`credential_id` of the credential ``settings`` call with (AK, else token); unauthenticated (a
    simulator), one per endpoint."""
    secret = settings.access_key or settings.auth_token
    return credential_id(secret.get_secret_value() if secret else f"none:{settings.api_url}")


class Loops(Protocol):
    """Who runs the limiter's background loops (the worker's supervisor: restarted with backoff if one dies,
    and reported while it is down). ``stop`` ends one for good."""

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, object]]) -> None: ...

    async def stop(self, name: str) -> None: ...


def build_limiter(settings: Settings, *, loops: Loops | None = None) -> RateLimiter | SharedRateLimiter:
    """The shared limiter when REDIS_URL is set (its loops run by ``loops``, if given), else the process-local
    one."""
    if settings.redis_url is None:
        return RateLimiter.from_settings(settings)
    return SharedRateLimiter.from_settings(settings, loops=loops)


class SharedRateLimiter:
    """See the module docstring. Use ``async with limiter.slot(project_id) as grant:``; ``await close()`` at the end."""

    def __init__(
        self,
        redis_url: str,
        credential: str,
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
        key_prefix: str = "snapworker",
        budget: str = "rate",
        heartbeat_s: float = 3.0,
        redis_timeout_s: float = 0.5,
        rng: random.Random | None = None,
        loops: Loops | None = None,
    ) -> None:
        """``credential`` is a :func:`credential_id` (never the secret itself); ``budget`` names which of its
        budgets this is (``rate``: batch-create's, ``read``: the reads'), each on keys of its own
        (:class:`~snapworker.cloud.redis_bucket.RedisBucket`). ``loops`` runs the grant loop and the heartbeat
        (None: plain tasks of the limiter's own)."""
        self._min_rate = min(min_rate, rate)
        self._recovery_step = recovery_step if recovery_step is not None else rate / 10
        self._aimd: dict[str, Any] = {"decrease_factor": decrease_factor, "recovery_period_s": recovery_period_s}
        self._aimd |= {"pause_range_s": pause_range_s, "max_pause_s": max_pause_s}
        RateLimiter(rate, burst, max_concurrency, min_rate=min_rate, **self._aimd)  # the same checks of the values
        self._url = redact_url(redis_url)
        self._store = RedisBucket(
            redis_url, credential, budget=budget, key_prefix=key_prefix, timeout_s=redis_timeout_s
        )
        self._bucket_key, self._workers_key = self._store.bucket_key, self._store.workers_key
        self._worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._rng = rng or random.Random()
        self._max_rate, self._burst, self._max_concurrency = rate, burst, max_concurrency
        self._max_pause_s, self._decrease_factor = max_pause_s, decrease_factor
        self._pause = ThrottlePause(pause_range_s, max_pause_s=max_pause_s, calm_s=recovery_period_s, rng=self._rng)
        self._heartbeat_s = heartbeat_s
        # An expired key reads as a full bucket at max_rate, unpaused: expire only once the state is that anyway.
        recovery_s = recovery_period_s * math.ceil((rate - self._min_rate) / self._recovery_step)
        self._ttl_ms = int(1000 * min(max_pause_s + recovery_s + burst / self._min_rate + 60, 86400))
        self._config = [rate, burst, self._min_rate, decrease_factor, recovery_period_s, self._recovery_step]
        self._rate, self._blocked_until, self._last_cut = rate, 0.0, 0.0  # the bucket as last seen in Redis
        self._live_workers = 0  # 0: never seen
        self._paused_until = 0.0  # monotonic: a throttle seen here, before Redis has it
        self._local: RateLimiter | None = None  # set while degraded
        self._waiters = Waiters()
        self._in_flight = 0
        self._kick = asyncio.Event()  # a waiter came or a place freed up
        self._interrupt = asyncio.Event()  # the mode changed or we are closing: stop any nap
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops = loops
        # unique per limiter: two accounts may share a credential (one per region), each with its own limiters
        name = f"{budget} limiter {credential[:8]}:{self._worker_id[-4:]}"
        self._loop_names = (f"{name} grants", f"{name} heartbeat")
        self._started = self._closed = False
        self._wait_seconds_total, self._throttles_total, self._fallbacks_total = 0.0, 0, 0

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> SharedRateLimiter:
        """REDIS_URL, the credential, RATE_LIMIT, RATE_BURST and MAX_CONCURRENCY from ``settings``."""
        if settings.redis_url is None:
            raise ConfigError("SharedRateLimiter needs REDIS_URL")
        limits = (settings.rate_limit, settings.rate_burst, settings.max_concurrency)
        return cls(settings.redis_url.get_secret_value(), settings_credential_id(settings), *limits, **kwargs)

    # -- metrics
    @property
    def max_rate(self) -> float:
        return self._max_rate

    @property
    def rate(self) -> float:
        """Calls per second allowed now: the fleet's, as last seen in Redis; this process's share while degraded."""
        return self._local.rate if self._local is not None else self._rate

    @property
    def paused_until(self) -> float:
        """End of the throttle pause, in Redis time (as last seen)."""
        return self._local.paused_until if self._local is not None else self._blocked_until

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def wait_seconds_total(self) -> float:
        return self._wait_seconds_total

    @property
    def throttles_total(self) -> int:
        return self._throttles_total

    @property
    def fallbacks_total(self) -> int:
        """Episodes of Redis trouble during which the local share was used."""
        return self._fallbacks_total

    @property
    def degraded(self) -> bool:
        return self._local is not None

    # -- use
    @asynccontextmanager
    async def slot(self, project_id: str) -> AsyncIterator[Grant]:
        grant = await self.acquire(project_id)
        try:
            yield grant
        finally:
            self.release()

    async def acquire(self, project_id: str) -> Grant:
        if self._closed:
            raise RuntimeError("SharedRateLimiter is closed")
        self._start()
        future = self._waiters.add(project_id, time.monotonic())
        self._kick.set()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted just as the caller gave up
            else:
                self._waiters.forget(project_id, future)
            raise

    def release(self) -> None:
        self._in_flight -= 1
        self._kick.set()

    def on_throttle(self, retry_after_s: float | None = None, *, sent_at: float | None = None) -> float:
        """Cut the shared rate (once per overload) and pause the fleet; returns the pause (s).

        Synchronous like RateLimiter's: this process pauses at once; Redis is told in the background.
        """
        self._throttles_total += 1
        if self._local is not None:
            pause = self._local.on_throttle(retry_after_s, sent_at=sent_at)
            # Outlives the episode: back on Redis, this process still waits the pause out.
            self._paused_until = max(self._paused_until, time.monotonic() + pause)
            return pause
        new_overload = sent_at is None or sent_at > self._last_cut  # what Redis will say; its answer overwrites this
        pause = self._pause.pause(time.monotonic(), retry_after_s, new_overload=new_overload)
        self._paused_until = max(self._paused_until, time.monotonic() + pause)
        if new_overload:
            self._rate = max(self._min_rate, self._rate * self._decrease_factor)
            log_throttle_episode(self._rate, self._max_rate, pause, scope="the fleet's ")
        if not self._closed:
            self._spawn(self._bucket_call("throttle", pause, "" if sent_at is None else repr(sent_at)))
        return pause

    async def close(self) -> None:
        """Stop the background tasks, leave the live-worker set, close the connections. Waiters are cancelled."""
        if self._closed:
            return
        self._closed = True
        self._interrupt.set()
        self._kick.set()
        if self._loops is not None and self._started:
            for name in self._loop_names:  # before they see _closed and return: no restart
                await self._loops.stop(name)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2 * self._store.call_timeout_s)
        self._waiters.cancel_all()
        await self._store.leave(self._worker_id)
        await self._store.close()

    # -- internals
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._loops is not None:
            grants, heartbeat = self._loop_names
            self._loops.start(grants, self._serve)
            self._loops.start(heartbeat, self._heartbeat)
            return
        self._spawn(self._serve())
        self._spawn(self._heartbeat())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # a reference, or the task may be collected mid-flight
        task.add_done_callback(self._tasks.discard)

    def _clock(self) -> float:
        return self._store.clock()

    async def _call(self, call: Awaitable[_T]) -> _T | None:
        """``call``'s answer; on any failure switch to the local share and return None."""
        try:
            return await call
        except Exception as exc:  # Redis down, timed out, refused or broken: never lose or stall a call for it
            self._degrade(exc)
            return None

    async def _bucket_call(self, op: str, *args: str | int | float) -> list[Any] | None:
        reply = await self._call(self._store.bucket([op, *self._config, self._ttl_ms, *args]))
        if reply is not None:
            self._rate, self._blocked_until, self._last_cut = (float(x) for x in reply[3:6])
        return reply

    def _degrade(self, exc: BaseException) -> None:
        if self._local is not None or self._closed:
            return
        n = max(1, self._live_workers)
        share = {"min_rate": self._min_rate / n, "recovery_step": self._recovery_step / n, **self._aimd}
        # Concurrency stays ours (sys.maxsize here); its clock approximates Redis's, so grants compare across modes.
        self._local = RateLimiter(self._max_rate / n, max(1, self._burst // n), sys.maxsize, **share,
                                  clock=self._clock, rng=self._rng)  # fmt: skip
        # Keep a pause still running (ours or the fleet's); sent_at=-inf: a pause, not a cut.
        pause = max(self._paused_until - time.monotonic(), self._blocked_until - self._clock())
        if pause > 0:
            self._local.on_throttle(pause, sent_at=-math.inf)
        self._fallbacks_total += 1
        self._interrupt.set()
        log.warning("Redis at %s failed (%s: %s): limiting locally at 1/%d of the shared rate until it answers",
                    self._url, type(exc).__name__, exc, n)  # fmt: skip

    async def _heartbeat(self) -> None:
        """Join the live-worker set every heartbeat_s and refresh the cached bucket; while degraded, this probes."""
        while not self._closed:  # not only cancellation: a client library may swallow a CancelledError
            was_degraded = self._local is not None
            # stale after 3 beats
            live = await self._call(self._store.heartbeat(self._worker_id, 3 * self._heartbeat_s,
                                                          int(30_000 * self._heartbeat_s)))  # fmt: skip
            if live is not None:
                self._live_workers = live
                if was_degraded and self._local is not None:
                    self._local = None
                    self._interrupt.set()
                    log.info("Redis at %s answers again: back on the shared rate budget", self._url)
                await self._bucket_call("peek")
            await asyncio.sleep(self._heartbeat_s * self._rng.uniform(0.8, 1.2))

    async def _serve(self) -> None:
        """Hand out grants in order: take tokens from Redis (or the local share while degraded), else sleep."""
        while not self._closed:
            self._kick.clear()
            self._interrupt.clear()
            waiting = self.queued
            if waiting == 0 or self._in_flight >= self._max_concurrency:
                await self._kick.wait()
                continue
            if self._local is not None:
                await self._take_local(self._local)
                continue
            if (pause := self._paused_until - time.monotonic()) > 0:
                await self._nap(pause)
                continue
            want = min(waiting, self._max_concurrency - self._in_flight)
            reply = await self._bucket_call("take", want)
            if reply is None:
                continue  # degraded now: the next turn serves locally
            granted, wait, now = int(reply[0]), float(reply[1]), float(reply[2])
            for _ in range(granted):
                self._grant(now)
            if granted < want:
                await self._nap(max(wait, 0.001))

    async def _take_local(self, local: RateLimiter) -> None:
        """Wait for a token of the local share and grant it, unless we go back to Redis first."""
        acquire = asyncio.ensure_future(local.acquire(""))
        stop = asyncio.ensure_future(self._interrupt.wait())
        try:
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
            if acquire.done():
                local.release()  # the local limiter is only a bucket here: concurrency is ours
                self._grant(acquire.result().granted_at)
        finally:
            for task in (acquire, stop):
                task.cancel()  # a token granted as we leave is released by RateLimiter itself
            await asyncio.gather(acquire, stop, return_exceptions=True)

    async def _nap(self, seconds: float) -> None:
        # Jitter, so workers told the same wait do not all come back in the same millisecond.
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds + self._rng.uniform(0.0, 0.002 + 0.05 * seconds)):
                await self._interrupt.wait()

    def _grant(self, granted_at: float) -> None:
        """Give one token to the next waiter, round-robin over projects; with none left (cancelled), it lapses."""
        waited = self._waiters.grant(granted_at, time.monotonic())
        if waited is not None:
            self._in_flight += 1
            self._wait_seconds_total += waited
