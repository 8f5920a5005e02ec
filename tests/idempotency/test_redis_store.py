"""The Redis store: rows round-trip in one pipeline, expire, and an unreachable server is StoreUnavailable.

Uses Redis database 7 (the shared limiter's tests use 0) and deletes the keys it wrote; the schema version's tests
use database 11 (they change the one key every store of a database reads). Under CI a missing Redis fails the test
instead of skipping it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from snapworker.errors import StoreUnavailable
from snapworker.idempotency import redis_store
from snapworker.idempotency.redis_store import RedisStore
from snapworker.idempotency.store import INTENT, OUTCOME, UNREADABLE, Row
from tests.helpers import redis_test_url, require_redis, unused_loopback_port

REDIS_URL = redis_test_url(7)
SCHEMA_URL = redis_test_url(11)


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
    ttl = await client.pttl(redis_store._name(f"{prefix}1"))
    await client.aclose()
    assert 0 < ttl <= 60_000


async def test_an_unreachable_redis_raises_store_unavailable() -> None:
    port = unused_loopback_port()
    s = RedisStore(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_s=0.5)
    with pytest.raises(StoreUnavailable, match="Redis store"):
        await s.lookup(["k"])
    await s.close()


async def test_rows_come_back_in_the_order_written_whatever_their_times(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    key = f"{prefix}1"
    await s.record_intent([Row(key, "fp", INTENT, "b", '["d1"]', 200.0)])  # a host whose clock runs ahead
    await s.record_outcome([Row(key, "fp", OUTCOME, "b", "[]", 200.0)])
    await s.record_intent([Row(key, "fp", INTENT, "a", '["d1"]', 100.0)])
    await s.record_outcome([Row(key, "fp", OUTCOME, "a", "[]", 100.0)])
    found = await s.lookup([key])
    assert [(r.attempt, r.kind) for r in found[key]] == [("b", INTENT), ("b", OUTCOME), ("a", INTENT), ("a", OUTCOME)]


async def test_a_record_that_cannot_be_read_is_doubtful_for_its_key_alone(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    await s.record_intent([Row(f"{prefix}1", "fp", INTENT, "a1", '["d1"]', 1.0)])
    await s.record_intent([Row(f"{prefix}2", "fp", INTENT, "a1", '["d2"]', 1.0)])
    client = Redis.from_url(REDIS_URL)
    await client.rpush(redis_store._name(f"{prefix}1"), "[not json")
    await client.aclose()
    found = await s.lookup([f"{prefix}1", f"{prefix}2"])
    assert [r.kind for r in found[f"{prefix}1"]] == [INTENT, UNREADABLE]
    assert [r.kind for r in found[f"{prefix}2"]] == [INTENT]


async def test_a_record_with_more_fields_than_this_version_knows_is_read(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    await s.record_intent([Row(f"{prefix}1", "fp", INTENT, "a1", '["d1"]', 1.0)])  # makes the record's key
    client = Redis.from_url(REDIS_URL)
    await client.rpush(redis_store._name(f"{prefix}1"), '[1,"a1","fp","[]",2.0,{"new":1}]')
    await client.aclose()
    found = await s.lookup([f"{prefix}1"])
    assert [(r.kind, r.body, r.at) for r in found[f"{prefix}1"]] == [(INTENT, '["d1"]', 1.0), (OUTCOME, "[]", 2.0)]


async def test_records_of_the_unversioned_hash_layout_are_not_read(store: tuple[RedisStore, str]) -> None:
    s, prefix = store
    client = Redis.from_url(REDIS_URL)
    await client.hset(f"snapworker:idem:{prefix}1", "0:a1", '["fp","[\\"d1\\"]",1.0]')
    await client.aclose()
    assert await s.lookup([f"{prefix}1"]) == {}


@pytest.fixture
async def schema_db() -> AsyncIterator[Redis]:
    require_redis()
    client = Redis.from_url(SCHEMA_URL, decode_responses=True)
    await client.delete(redis_store.SCHEMA_KEY)
    try:
        yield client
    finally:
        await client.delete(redis_store.SCHEMA_KEY)
        await client.aclose()


async def test_the_schema_version_is_recorded_on_first_use(schema_db: Redis) -> None:
    s = RedisStore(SCHEMA_URL, ttl_s=60)
    await s.lookup(["k"])
    await s.close()
    assert await schema_db.get(redis_store.SCHEMA_KEY) == str(redis_store.SCHEMA_VERSION)


async def test_a_newer_schema_version_is_refused_and_kept(schema_db: Redis) -> None:
    newer = redis_store.SCHEMA_VERSION + 1
    await schema_db.set(redis_store.SCHEMA_KEY, newer)
    s = RedisStore(SCHEMA_URL, ttl_s=60)
    with pytest.raises(StoreUnavailable, match=f"version {newer}.*newer"):
        await s.record_intent([Row("k", "fp", INTENT, "a1", "[]", 1.0)])
    await s.close()
    assert await schema_db.get(redis_store.SCHEMA_KEY) == str(newer)
    assert await schema_db.exists(redis_store._name("k")) == 0
