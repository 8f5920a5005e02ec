"""The Redis store: rows round-trip in one pipeline, expire, and an unreachable server is StoreUnavailable.

Uses Redis database 7 (the shared limiter's tests use 0) and deletes the keys it wrote. Under CI a missing
Redis fails the test instead of skipping it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from snapworker.errors import StoreUnavailable
from snapworker.idempotency.redis_store import RedisStore
from snapworker.idempotency.store import INTENT, OUTCOME, Row
from tests.helpers import redis_test_url, require_redis, unused_loopback_port

REDIS_URL = redis_test_url(7)


@pytest.fixture
async def store() -> AsyncIterator[tuple[RedisStore, str]]:
    require_redis()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    s = RedisStore(REDIS_URL, ttl_s=60)
    try:
        yield s, prefix
    finally:
        await s.close()
        cleanup = Redis.from_url(REDIS_URL)
        keys = [k async for k in cleanup.scan_iter(match=f"snapworker:idem:{prefix}*")]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()


async def test_intent_and_outcome_rows_come_back_per_key_oldest_first(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    await s.record_intent([Row(f"{prefix}1", "fp", INTENT, "a1", '["d1"]', 1.0)])
    await s.record_outcome([Row(f"{prefix}1", "fp", OUTCOME, "a1", "[]", 2.0)])
    found = await s.lookup([f"{prefix}1", f"{prefix}2"])
    assert list(found) == [f"{prefix}1"]
    assert [(r.kind, r.attempt, r.body) for r in found[f"{prefix}1"]] == [
        (INTENT, "a1", '["d1"]'),
        (OUTCOME, "a1", "[]"),
    ]


async def test_records_carry_the_ttl(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    await s.record_intent([Row(f"{prefix}1", "fp", INTENT, "a1", "[]", 1.0)])
    client = Redis.from_url(REDIS_URL)
    ttl = await client.pttl(f"snapworker:idem:{prefix}1")
    await client.aclose()
    assert 0 < ttl <= 60_000


async def test_an_unreachable_redis_raises_store_unavailable() -> None:
    port = unused_loopback_port()
    s = RedisStore(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="Redis store"):
        await s.lookup(["k"])
    await s.close()
