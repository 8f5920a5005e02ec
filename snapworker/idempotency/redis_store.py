"""The fleet's idempotency store: Redis (REDIS_URL, the server the fleet's rate budget uses).

A redelivered request may reach any worker of a fleet, so the records must be shared. Layout 2: one Redis list
per request key, ``snapworker:idem:<key>\\x1fv2``, one element per row (JSON ``[kind, attempt, fingerprint, body,
at]``, elements after those ignored), appended with RPUSH and expiring IDEMPOTENCY_TTL_S after its last write.
Size stays bounded by the TTL; give Redis a ``maxmemory`` with the ``volatile-ttl`` policy if the fleet's volume
in a TTL could exceed it (the soonest-expiring records go first).

- **Ordered by the store**: a key's rows come back in list order, the order Redis appended them (``Row.seq`` is
  the index); never a clock. Within one write an attempt's intents go in before its outcomes.
- **Versioned**: ``snapworker:idem:schema`` holds the schema version of the database's records (set on first use;
  it has no TTL). A store of a **newer** version is refused: every call raises StoreUnavailable naming both
  versions (the worker holds its messages), and nothing of it is touched. The only older layout (1: a hash per
  key under ``snapworker:idem:<key>``, without a version key) is not read: its records expire within their TTL,
  and a request republished after the upgrade whose only record was there is sent again (as the SQLite store
  empties an older file). Its keys are named apart, so workers of both versions never trip over each other's.
  One database is one store: every worker using it must run a version that can read it.
- **Batched**: one pipelined round trip (no MULTI) per ``record_*`` call and per ``lookup``, whatever the number
  of requests (and one more, once, to check the version). Durability is Redis's own (AOF ``everysec`` or better
  is advised).
- A record that cannot be read back (damaged, or a key holding something else) is an UNREADABLE row of its key:
  the other keys of the lookup are answered as usual.
- redis-py's errors and timeouts become :class:`~snapworker.errors.StoreUnavailable`. Short socket timeouts and
  no client-side retries: the worker decides what to do when the store is away (hold the messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snapworker.errors import ConfigError, StoreUnavailable
from snapworker.idempotency.records import refuse_newer
from snapworker.idempotency.store import UNREADABLE, Row
from snapworker.settings import redact_url

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["SCHEMA_KEY", "SCHEMA_VERSION", "RedisStore"]

#: The records' layout and format (:mod:`.records`); a database of a newer one is refused.
SCHEMA_VERSION = 2
SCHEMA_KEY = "snapworker:idem:schema"  # no record's name: theirs all hold the key's \x1f
_PREFIX = "snapworker:idem:"
_SUFFIX = "\x1fv2"  # apart from layout 1's hashes, which share the prefix (tools delete keys by it)
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _name(key: str) -> str:
    return _PREFIX + key + _SUFFIX


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
        self._versioned = False  # the schema version was checked (and recorded if missing)
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )

    async def _pipelined(self, commands: list[tuple[str, tuple[Any, ...]]], *, raise_on_error: bool = True) -> Any:
        """The answers of ``commands`` (name, arguments), sent in one round trip after the version check."""
        from redis.exceptions import RedisError

        try:
            if not self._versioned:
                await self._check_version()
            async with asyncio.timeout(self._timeout_s), self._redis.pipeline(transaction=False) as pipe:
                for name, args in commands:
                    pipe.execute_command(name, *args)
                return await pipe.execute(raise_on_error=raise_on_error)
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis store {self._url}: {exc}") from exc

    async def _check_version(self) -> None:
        async with asyncio.timeout(self._timeout_s), self._redis.pipeline(transaction=False) as pipe:
            pipe.set(SCHEMA_KEY, SCHEMA_VERSION, nx=True)
            pipe.get(SCHEMA_KEY)
            _, found = await pipe.execute()
        try:
            version = int(found)
        except (TypeError, ValueError):
            raise StoreUnavailable(f"Redis store {self._url}: {SCHEMA_KEY} holds {found!r}, not a version") from None
        refuse_newer(version, SCHEMA_VERSION, f"Redis store {self._url} ({SCHEMA_KEY})", "a Redis database")
        if version < SCHEMA_VERSION:  # no released version wrote one (layout 1 had none): its records are apart
            await self._redis.set(SCHEMA_KEY, SCHEMA_VERSION)
        self._versioned = True

    async def lookup(self, keys: Sequence[str]) -> dict[str, list[Row]]:
        unique = list(dict.fromkeys(keys))
        # per-key errors (a key holding another type) come back in place: unreadable for that key alone
        answers = await self._pipelined([("LRANGE", (_name(key), 0, -1)) for key in unique], raise_on_error=False)
        found: dict[str, list[Row]] = {}
        for key, answer in zip(unique, answers, strict=True):
            if isinstance(answer, Exception):
                found[key] = [Row(key, "", UNREADABLE, "", "", 0.0)]
                continue
            rows = []
            for seq, value in enumerate(answer):
                try:
                    fields = json.loads(value)
                    rows.append(Row(key, fields[2], fields[0], fields[1], fields[3], float(fields[4]), seq))
                except (ValueError, LookupError, TypeError):
                    rows.append(Row(key, "", UNREADABLE, "", "", 0.0, seq))
            if rows:
                found[key] = rows
        return found

    async def _write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        first: dict[str, int] = {}  # attempt -> its place in rows: an attempt's intents go before its outcomes
        values: dict[str, list[str]] = {}  # the record's name -> its new elements, in order
        for row in sorted(rows, key=lambda r: (first.setdefault(r.attempt, len(first)), r.kind)):
            element = _encode([row.kind, row.attempt, row.fingerprint, row.body, row.at])
            values.setdefault(_name(row.key), []).append(element)
        commands = []
        for name, elements in values.items():
            commands += [("RPUSH", (name, *elements)), ("PEXPIRE", (name, self._ttl_ms))]
        await self._pipelined(commands)

    async def record_intent(self, rows: Sequence[Row]) -> None:
        await self._write(rows)

    async def record_outcome(self, rows: Sequence[Row]) -> None:
        await self._write(rows)

    async def close(self) -> None:
        from redis.exceptions import RedisError

        with contextlib.suppress(RedisError, OSError):  # closing a dead connection: nothing left to release
            await self._redis.aclose()
