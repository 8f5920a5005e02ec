"""The fleet's idempotency store: Redis (REDIS_URL, the server the fleet's rate budget uses).

A redelivered request may reach any worker of a fleet, so the records must be shared. One Redis hash per
request key, ``snapworker:idem:<key>``, one field per row (``<kind>:<attempt>`` -> JSON), expiring
IDEMPOTENCY_TTL_S after its last write. Size stays bounded by the TTL; give Redis a ``maxmemory`` with the
``volatile-ttl`` policy if the fleet's volume in a TTL could exceed it (the soonest-expiring records go first).

- **Batched**: one pipelined round trip (no MULTI) per ``record_*`` call and per ``lookup``, whatever the number
  of requests. Durability is Redis's own (AOF ``everysec`` or better is advised).
- redis-py's errors and timeouts become :class:`~snapworker.errors.StoreUnavailable`. Short socket timeouts and
  no client-side retries: the worker decides what to do when the store is away (hold the messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from snapworker.errors import ConfigError, StoreUnavailable
from snapworker.idempotency.store import Row
from snapworker.settings import redact_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisStore"]

_PREFIX = "snapworker:idem:"


class RedisStore:
    """An :class:`~snapworker.idempotency.store.IdempotencyStore` on Redis."""

    def __init__(self, url: str, *, ttl_s: float, timeout_s: float = 2.0) -> None:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - the extra is installed wherever REDIS_URL is used
            raise ConfigError("the Redis idempotency store needs redis: pip install 'snapworker[redis]'") from exc
        self._url = redact_url(url)
        self._timeout_s = 3 * timeout_s  # belt and braces around the client's own socket timeouts
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        from redis.exceptions import RedisError

        unique = list(dict.fromkeys(keys))
        try:
            async with asyncio.timeout(self._timeout_s), self._redis.pipeline(transaction=False) as pipe:
                for key in unique:
                    pipe.hgetall(_PREFIX + key)
                answers = await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store {self._url}: {exc}") from exc
        found: dict[str, list[Row]] = {}
        for key, fields in zip(unique, answers, strict=True):
            rows = []
            for name, value in fields.items():
                kind, _, attempt = name.partition(":")
                fp, body, at = json.loads(value)
                rows.append(Row(key, fp, int(kind), attempt, body, float(at)))
            if rows:
                found[key] = sorted(rows, key=lambda r: (r.at, r.kind))
        return found

    async def _write(self, rows: Sequence[Row]) -> None:
        from redis.exceptions import RedisError

        if not rows:
            return
        try:
            async with asyncio.timeout(self._timeout_s), self._redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    name = _PREFIX + row.key
                    field = f"{row.kind}:{row.attempt}"
                    pipe.hset(name, field, json.dumps([row.fingerprint, row.body, row.at], separators=(",", ":")))
                    pipe.pexpire(name, self._ttl_ms)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store {self._url}: {exc}") from exc

    async def record_intent(self, rows: Sequence[Row]) -> None:
        await self._write(rows)

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        await self._write(rows)

    async def close(self) -> None:
        from redis.exceptions import RedisError

        with contextlib.suppress(RedisError, OSError):  # closing a dead connection: nothing left to release
            await self._redis.aclose()
