"""The read budget: per worker without Redis; with REDIS_URL one per credential for the whole fleet, on keys of
its own, which job reads and snapshot listings share (against a real Redis and the simulator)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from snapworker.cloud.accounts import Account, AccountRouter
from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.jobs import JobReader
from snapworker.cloud.limiter import RateLimiter
from snapworker.cloud.read_budget import build_read_limiter
from snapworker.cloud.shared_limiter import SharedRateLimiter, build_limiter, settings_credential_id
from snapworker.cloud.snapshots import SnapshotReader
from snapworker.domain.keys import MergeKey
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.simulator.state import SimConfig
from tests.helpers import redis_test_url, require_redis

REDIS_URL = redis_test_url(0)
PROJECT = "0123456789abcdef0123456789abcdef"
OTHER = "-other"  # a second credential of a test: its token + this


@pytest.fixture
def token() -> str:
    """A credential no other test uses: its budget's keys are this test's own."""
    return f"read-budget-{uuid.uuid4().hex}"


@pytest.fixture
async def redis(token: str) -> AsyncIterator[Redis]:
    """A plain client on the test Redis; deletes the keys of the test's credentials' budgets at the end."""
    require_redis()
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield client
    finally:
        for secret in (token, token + OTHER):
            cid = settings_credential_id(Settings(auth_token=secret))
            keys = [key async for key in client.scan_iter(match=f"snapworker:*:{cid}")]
            if keys:
                await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def simulator(token: str) -> AsyncIterator[Simulator]:
    sim = Simulator(SimConfig(tokens=frozenset({token})))
    await sim.start(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.stop()


def test_without_redis_each_worker_has_its_own_read_budget_at_90_percent_of_read_rate_limit() -> None:
    limiter = build_read_limiter(Settings(read_rate_limit=3.0, read_rate_burst=1))
    assert isinstance(limiter, RateLimiter)
    assert limiter.max_rate == pytest.approx(2.7)


async def test_with_redis_the_read_budget_is_shared_at_90_percent_on_a_key_apart_from_batch_creates(
    redis: Redis, token: str
) -> None:
    settings = Settings(auth_token=token, redis_url=REDIS_URL, read_rate_limit=3.0)
    reads, creates = build_read_limiter(settings), build_limiter(settings)
    try:
        assert isinstance(reads, SharedRateLimiter)
        assert isinstance(creates, SharedRateLimiter)
        assert reads.max_rate == pytest.approx(2.7)
        cid = settings_credential_id(settings)
        assert (reads._bucket_key, creates._bucket_key) == (f"snapworker:read:{cid}", f"snapworker:rate:{cid}")
        assert reads._workers_key != creates._workers_key  # each budget counts its own limiters
    finally:
        await reads.close()
        await creates.close()


async def test_each_accounts_credential_has_its_own_shared_read_budget(redis: Redis, token: str) -> None:
    base = Settings(redis_url=REDIS_URL)
    accounts = [
        Account(name, frozenset({f"p-{name}"}), Settings(redis_url=REDIS_URL, auth_token=f"{token}{suffix}"))
        for name, suffix in (("a", ""), ("b", OTHER))
    ]
    router = AccountRouter(base, accounts, None)
    try:
        a, b = router.read_limiter("p-a"), router.read_limiter("p-b")
        assert isinstance(a, SharedRateLimiter)
        assert isinstance(b, SharedRateLimiter)
        assert a._bucket_key == f"snapworker:read:{settings_credential_id(accounts[0].settings)}"
        assert b._bucket_key == f"snapworker:read:{settings_credential_id(accounts[1].settings)}"
        assert a._bucket_key != b._bucket_key
    finally:
        await router.close()


async def test_two_workers_job_reads_and_listings_never_exceed_the_shared_read_budget_in_any_second(
    redis: Redis, token: str, simulator: Simulator
) -> None:
    # Paced at 4.5/s, 1 saved up: alone, each worker would read up to 5 in a second, so together up to 10.
    settings = Settings(
        api_url=simulator.url,
        auth_token=token,
        redis_url=REDIS_URL,
        read_rate_limit=5.0,
        read_rate_burst=1,
        retry_max_tries=1,
    )
    workers = [
        WorkspaceClient(settings, limiter=RateLimiter(100.0, 10, 4), read_limiter=build_read_limiter(settings))
        for _ in range(2)
    ]
    try:
        job = await workers[0].batch_create(MergeKey(PROJECT, None, None, None), ["desk-1"])
        simulator.reset_stats()
        reader, lister = JobReader(workers[0]), SnapshotReader(workers[1])
        await asyncio.gather(
            *(reader.read(PROJECT, job.job_id) for _ in range(9)),
            *(lister.list_snapshots(PROJECT, ["desk-1"], since=0.0) for _ in range(9)),
        )
    finally:
        for client in workers:
            await client.close()
    stats = simulator.stats()
    assert stats["job_queries"] + stats["snapshot_queries"] == 18
    assert stats["max_reads_in_one_second"] <= 5
