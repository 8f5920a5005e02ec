"""The Redis side of a shared rate budget: one credential's bucket and live-worker set, on Redis's clock.

Each budget of a credential has two keys: its token bucket (a hash, ``<prefix>:<budget>:<credential_id>``)
and the sorted set of the limiters spending it (``<prefix>:workers:<credential_id>`` for batch-create's
budget, ``rate``; ``<prefix>:<budget>-workers:<credential_id>`` for another, such as ``read``), so each budget
counts its own limiters. Only the two Lua scripts beside this module change them, atomically. Every call is
bounded (short socket timeouts, no retries, a timeout around it) and raises on any failure: what a failure
means is the caller's (:class:`~snapworker.cloud.shared_limiter.SharedRateLimiter` falls back to a local
share).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from snapworker.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisBucket"]

# The two Lua scripts (one atomic step each, on Redis's clock) live beside this module; each says its contract.
_BUCKET_LUA = (files("snapworker.cloud") / "shared_bucket.lua").read_text(encoding="utf-8")
_HEARTBEAT_LUA = (files("snapworker.cloud") / "shared_workers.lua").read_text(encoding="utf-8")


class RedisBucket:
    """One budget's keys in Redis, for ``credential`` (a :func:`~snapworker.cloud.shared_limiter.credential_id`,
    never the secret). ``budget`` names the budget (``rate``: batch-create's; ``read``: the reads')."""

    def __init__(
        self,
        redis_url: str,
        credential: str,
        *,
        budget: str = "rate",
        key_prefix: str = "snapworker",
        timeout_s: float = 0.5,
    ) -> None:
        try:  # lazily: snapworker runs without the extra when no REDIS_URL is set
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:
            raise ConfigError("REDIS_URL is set but redis is not installed: pip install 'snapworker[redis]'") from exc
        # No retries and short timeouts: an unanswered Redis must turn into the local fallback, not a stall.
        self._redis: Redis = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.call_timeout_s = 3 * timeout_s  # belt and braces around the client's own timeouts
        self._bucket_lua: AsyncScript = self._redis.register_script(_BUCKET_LUA)
        self._heartbeat_lua: AsyncScript = self._redis.register_script(_HEARTBEAT_LUA)
        self.bucket_key = f"{key_prefix}:{budget}:{credential}"
        workers = "workers" if budget == "rate" else f"{budget}-workers"
        self.workers_key = f"{key_prefix}:{workers}:{credential}"
        self._offset = time.time() - time.monotonic()  # Redis clock ~= monotonic + offset, re-measured per reply

    def clock(self) -> float:
        """Redis's clock, as measured at the last reply (the time of its grants and pauses)."""
        return time.monotonic() + self._offset

    async def bucket(self, args: Sequence[str | int | float]) -> list[Any]:
        """Run the bucket script with ``args`` (see shared_bucket.lua); its reply."""
        return await self._run(self._bucket_lua, self.bucket_key, args, now_at=2)

    async def heartbeat(self, worker_id: str, stale_s: float, ttl_ms: int) -> int:
        """Say ``worker_id`` is alive, forget ids silent for ``stale_s``; how many are alive."""
        reply = await self._run(self._heartbeat_lua, self.workers_key, [worker_id, stale_s, ttl_ms], now_at=-1)
        return int(reply[0])

    async def leave(self, worker_id: str) -> None:
        """Best effort: take ``worker_id`` out of the live set (a stale id is pruned by the others anyway)."""
        with suppress(Exception):
            async with asyncio.timeout(self.call_timeout_s):
                await self._redis.zrem(self.workers_key, worker_id)

    async def close(self) -> None:
        """Close the connections, best effort."""
        with suppress(Exception):
            async with asyncio.timeout(self.call_timeout_s):
                await self._redis.aclose()

    async def _run(self, script: AsyncScript, key: str, args: Sequence[str | int | float], *, now_at: int) -> list[Any]:
        sent = time.monotonic()
        async with asyncio.timeout(self.call_timeout_s):
            reply: list[Any] = await script(keys=[key], args=args)
        self._offset = float(reply[now_at]) - (sent + time.monotonic()) / 2
        return reply
