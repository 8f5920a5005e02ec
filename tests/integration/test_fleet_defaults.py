"""A fleet started with one environment (no REDIS_URL, PARTITIONS at its default) needs no fleet settings: the
workers split RATE_LIMIT among themselves, and a worker joining a fleet set up to waste calls says so."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest

from snapworker.cloud.limiter import RateLimiter
from snapworker.runtime.worker import Worker
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


async def test_two_workers_without_redis_each_take_half_the_rate(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe
) -> None:
    first = await start_worker(partitions=4, rate_limit=2.0)
    second = await start_worker(partitions=4, rate_limit=2.0)

    async def halved() -> bool:
        rates = [w.limiter.max_rate for w in (first, second) if isinstance(w.limiter, RateLimiter)]
        return rates == [1.0, 1.0]

    await probe.wait_until("both workers to take half of RATE_LIMIT", halved, timeout=15, every=0.2)


async def test_a_lone_worker_keeps_the_whole_rate(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe
) -> None:
    worker = await start_worker(partitions=4, rate_limit=2.0)

    async def claimed() -> bool:
        return len(worker._sessions.current.attached()) == 4 if worker._sessions.current else False

    await probe.wait_until("the lone worker to claim every partition", claimed, timeout=15, every=0.2)
    assert isinstance(worker.limiter, RateLimiter)
    assert worker.limiter.max_rate == 2.0


async def test_a_worker_joining_an_unpartitioned_fleet_without_redis_warns(
    start_worker: Callable[..., Awaitable[Worker]], caplog: pytest.LogCaptureFixture
) -> None:
    await start_worker(partitions=0)
    with caplog.at_level(logging.WARNING, logger="snapworker.worker"):
        await start_worker(partitions=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 workers consume" in w and "PARTITIONS=0" in w for w in warnings), warnings


async def test_a_lone_worker_does_not_warn(
    start_worker: Callable[..., Awaitable[Worker]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="snapworker.worker"):
        await start_worker(partitions=0)
    assert not any("workers consume" in r.getMessage() for r in caplog.records)
