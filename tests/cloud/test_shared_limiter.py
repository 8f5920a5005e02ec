"""The shared limiter against a real Redis (fail, not skip, under CI): one budget for many workers, and fallback.

Each test has its own key prefix and credential, and deletes its keys at the end. Redis going away and coming
back is a small TCP proxy in front of it that the test stops and starts again.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.cloud.shared_limiter import SharedRateLimiter, build_limiter, credential_id
from snapworker.errors import ConfigError
from snapworker.runtime.supervisor import Supervisor
from snapworker.settings import Settings
from tests.helpers import REDIS_HOST, REDIS_PORT, redis_test_url, require_redis, unused_loopback_port

REDIS_URL = redis_test_url(0)

Make = Callable[..., SharedRateLimiter]


@pytest.fixture
def prefix() -> str:
    return f"snapworker-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis(prefix: str) -> AsyncIterator[Redis]:
    """A plain client on the test Redis; deletes the test's keys at the end. Under CI a missing Redis fails."""
    require_redis()
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def make(redis: Redis, prefix: str) -> AsyncIterator[Make]:
    """Builds SharedRateLimiters on this test's keys (Redis itself unless ``url`` says otherwise); closes them."""
    made: list[SharedRateLimiter] = []
    credential = credential_id(uuid.uuid4().hex)

    def build(rate: float = 10.0, burst: int = 5, concurrency: int = 100, url: str = REDIS_URL, **kw: Any) -> Any:
        kw.setdefault("heartbeat_s", 0.2)
        limiter = SharedRateLimiter(url, credential, rate, burst, concurrency, key_prefix=prefix, **kw)
        made.append(limiter)
        return limiter

    try:
        yield build
    finally:
        for limiter in made:
            await limiter.close()


async def eventually(check: Callable[[], Awaitable[object]], timeout: float = 3.0) -> None:
    """Wait until ``check()`` is true: state another task or another process changes, polled."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 - nothing to wait on: the change happens in Redis
            await asyncio.sleep(0.02)


async def shared_rate(redis: Redis, prefix: str) -> float:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}:rate:*")]
    return float(await redis.hget(keys[0], "rate") or "nan") if keys else float("nan")


async def one_call(limiter: SharedRateLimiter, project_id: str = "p") -> Grant:
    async with asyncio.timeout(5.0), limiter.slot(project_id) as grant:
        return grant


class TcpProxy:
    """Forwards 127.0.0.1:port to Redis; ``stop`` refuses new connections and cuts the open ones."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serving = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._serving = True
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self._serving = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await asyncio.wait_for(self._server.wait_closed(), 5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_reader, up_writer = await asyncio.open_connection(REDIS_HOST, REDIS_PORT)
        self._writers.add(up_writer)
        if not self._serving:  # stopped while we connected upstream
            writer.transport.abort()
            up_writer.transport.abort()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy(redis: Redis) -> AsyncIterator[TcpProxy]:
    p = TcpProxy()
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


# -- one budget


async def test_workers_sharing_a_credential_never_exceed_the_budget_together(make: Make) -> None:
    rate, burst, seconds = 20.0, 5, 3.0
    limiters = [make(rate=rate, burst=burst, concurrency=4) for _ in range(4)]
    times: list[float] = []
    per_limiter = [0] * len(limiters)

    async def caller(index: int) -> None:
        while True:
            async with limiters[index].slot(f"project-{index}") as grant:
                times.append(grant.granted_at)
                per_limiter[index] += 1

    tasks = [asyncio.create_task(caller(i)) for i in range(len(limiters)) for _ in range(4)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert not any(limiter.degraded for limiter in limiters)
    times.sort()
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6, f"{j - i + 1} grants in {times[j] - start} s"
    assert len(times) >= 0.8 * (burst + rate * seconds)  # and the budget is used, not wasted
    assert min(per_limiter) > 0


async def test_calls_in_flight_stay_within_max_concurrency_per_process(make: Make) -> None:
    limiter = make(rate=100.0, burst=100, concurrency=2)
    peak = 0

    async def call() -> None:
        nonlocal peak
        async with limiter.slot("p"):
            peak = max(peak, limiter.in_flight)
            await asyncio.sleep(0.1)

    async with asyncio.timeout(5.0):
        await asyncio.gather(*(call() for _ in range(6)))
    assert (peak, limiter.in_flight, limiter.queued) == (2, 0, 0)


async def test_a_cancelled_waiter_leaves_the_queue(make: Make) -> None:
    limiter = make(rate=2.0, burst=1)
    await one_call(limiter)
    waiting = asyncio.create_task(one_call(limiter))
    await asyncio.sleep(0.05)
    assert limiter.queued == 1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert (limiter.queued, limiter.in_flight) == (0, 0)
    await one_call(limiter)  # the next caller is still served


# -- AIMD on the shared bucket


async def test_a_throttle_on_one_worker_cuts_the_rate_and_pauses_the_others(
    make: Make, redis: Redis, prefix: str
) -> None:
    a, b = make(rate=10.0, burst=5), make(rate=10.0, burst=5)
    grant = await one_call(a)
    assert a.on_throttle(1.0, sent_at=grant.granted_at) == 1.0
    await eventually(lambda: _equals(shared_rate(redis, prefix), 5.0))
    started = time.monotonic()
    await one_call(b)
    assert time.monotonic() - started >= 0.8  # paused by a's throttle (1 s, a little of it already gone)
    assert (b.rate, a.throttles_total, b.throttles_total) == (5.0, 1, 0)


async def test_throttles_of_calls_granted_before_the_fleets_last_cut_do_not_cut_again(
    make: Make, redis: Redis, prefix: str
) -> None:
    a, b = make(rate=8.0, burst=8), make(rate=8.0, burst=8)
    first, second = await one_call(a), await one_call(b)
    a.on_throttle(0.0, sent_at=first.granted_at)
    await eventually(lambda: _equals(shared_rate(redis, prefix), 4.0))
    b.on_throttle(0.0, sent_at=second.granted_at)  # the same overload, seen by another worker
    third = await one_call(b)
    assert await shared_rate(redis, prefix) == 4.0
    b.on_throttle(0.0, sent_at=third.granted_at)  # a call granted after the cut: a new overload
    await eventually(lambda: _equals(shared_rate(redis, prefix), 2.0))


async def test_the_shared_rate_climbs_back_one_step_per_calm_period(make: Make, redis: Redis, prefix: str) -> None:
    a = make(rate=10.0, burst=5, recovery_period_s=0.5, recovery_step=2.0)
    b = make(rate=10.0, burst=5, recovery_period_s=0.5, recovery_step=2.0)
    await one_call(a)
    thrown = time.monotonic()
    a.on_throttle(0.2)  # 5/s; calm from the end of the 0.2 s pause: +2 at 0.7 s, +2 at 1.2 s, capped at 1.7 s
    await eventually(lambda: _equals(shared_rate(redis, prefix), 5.0))
    await asyncio.sleep(0.9 - (time.monotonic() - thrown))
    await one_call(b)
    assert b.rate == 7.0
    await asyncio.sleep(2.0 - (time.monotonic() - thrown))
    await one_call(b)
    assert b.rate == 10.0


async def _equals(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


# -- fallback


async def test_calls_go_on_at_the_local_share_when_redis_is_unreachable(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = make(rate=20.0, burst=2, url=f"redis://127.0.0.1:{unused_loopback_port()}/0")
    started = time.monotonic()
    grants = [await one_call(limiter) for _ in range(6)]
    assert time.monotonic() - started < 2.0
    assert len(grants) == 6
    assert limiter.degraded
    assert limiter.rate == 20.0  # never saw the fleet: the whole rate
    await asyncio.sleep(0.5)  # failed probes do not start new episodes
    assert limiter.fallbacks_total == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_an_unanswering_redis_times_out_into_the_fallback(make: Make) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # accept and read, never answer

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        limiter = make(rate=20.0, burst=2, url=f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.2)
        started = time.monotonic()
        await one_call(limiter)
        assert time.monotonic() - started < 1.5
        assert limiter.degraded
        await limiter.close()  # no more connections to it
    finally:
        server.close()
        await asyncio.sleep(0.05)  # handlers of connections accepted just now are running
        for writer in accepted:
            writer.transport.abort()
        await asyncio.sleep(0)  # the handlers see EOF and end


async def test_the_local_share_divides_the_rate_by_the_live_workers(
    make: Make, redis: Redis, prefix: str, proxy: TcpProxy
) -> None:
    limiter = make(rate=20.0, burst=8, url=proxy.url)
    workers_key = limiter._workers_key
    seconds, _ = await redis.time()
    alive = seconds + 30  # three other workers, fresh for the whole test
    await redis.zadd(workers_key, {"other-1": alive, "other-2": alive, "other-3": alive})
    await one_call(limiter)
    await eventually(lambda: _equals(_count(redis.zcard(workers_key)), 4.0))
    await asyncio.sleep(0.1)  # the heartbeat's reply is read
    await proxy.stop()
    await one_call(limiter)
    assert limiter.degraded
    assert limiter.rate == 5.0


async def _count(value: Awaitable[int]) -> float:
    return float(await value)


async def test_the_shared_budget_is_used_again_when_redis_answers(
    make: Make, redis: Redis, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="snapworker.cloud")
    limiter = make(rate=20.0, burst=5, url=proxy.url)
    await one_call(limiter)
    await proxy.stop()
    await one_call(limiter)
    assert limiter.degraded
    await proxy.start()
    await eventually(lambda: _equals(_count(_degraded(limiter)), 0.0))
    grant = await one_call(limiter)
    assert float(await redis.hget(limiter._bucket_key, "updated") or 0) == grant.granted_at  # granted by Redis
    assert limiter.fallbacks_total == 1
    assert any("answers again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def _degraded(limiter: SharedRateLimiter) -> int:
    return int(limiter.degraded)


# -- keys


async def test_keys_name_a_hash_of_the_credential_never_the_secret_and_expire(redis: Redis, prefix: str) -> None:
    access_key, secret_key = f"AK{uuid.uuid4().hex}", f"SK{uuid.uuid4().hex}"
    settings = Settings(redis_url=REDIS_URL, access_key=access_key, secret_key=secret_key)
    limiter = SharedRateLimiter.from_settings(settings, key_prefix=prefix, heartbeat_s=0.2)
    try:
        await one_call(limiter)
        await eventually(lambda: _count(redis.exists(limiter._workers_key)))
        keys = sorted([key async for key in redis.scan_iter(match=f"{prefix}:*")])
        contents = str(await redis.hgetall(keys[0])) + str(await redis.zrange(keys[1], 0, -1))
        ttls = [await redis.pttl(key) for key in keys]
    finally:
        await limiter.close()
    assert [key.rsplit(":", 1)[0] for key in keys] == [f"{prefix}:rate", f"{prefix}:workers"]
    ids = {key.rsplit(":", 1)[1] for key in keys}
    assert len(ids) == 1  # one credential id for both keys
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    for text in (*keys, contents):
        assert access_key not in text
        assert secret_key not in text
    assert all(ttl > 0 for ttl in ttls)  # idle buckets and worker sets vanish


# -- factory


async def test_the_factory_picks_the_shared_limiter_only_when_redis_url_is_set() -> None:
    assert isinstance(build_limiter(Settings()), RateLimiter)
    shared = build_limiter(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert isinstance(shared, SharedRateLimiter)
    either: Limiter = shared  # mypy checks it fits wherever a limiter is expected
    assert either.max_rate == Settings().rate_limit
    await shared.close()


def test_the_factory_names_the_extra_when_redis_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in sys.modules if name == "redis" or name.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'snapworker\[redis\]'"):
        build_limiter(Settings(redis_url="redis://127.0.0.1:6379/0"))


async def test_a_grant_loop_that_dies_is_restarted_by_the_workers_supervisor(make: Make) -> None:
    async with Supervisor(initial_s=0.05) as loops:
        limiter = make(loops=loops)
        serve = limiter._serve
        deaths = 0

        async def dies_once() -> None:
            nonlocal deaths
            if deaths == 0:
                deaths += 1
                raise RuntimeError("a bug in the grant loop")
            await serve()

        limiter._serve = dies_once  # type: ignore[method-assign]
        async with asyncio.timeout(5):
            await limiter.acquire("p1")  # granted by the restarted loop
        limiter.release()
        grants = next(name for name in loops._loops if name.endswith("grants"))
        assert loops.restarts(grants) == 1
        await limiter.close()
        assert loops.problems() == {}  # stopped with the limiter, not restarted
