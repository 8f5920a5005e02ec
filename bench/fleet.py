"""A fleet: several worker processes at once sharing one credential (one token), on the same queues; single-desktop
requests, published before they start. Each mode runs on its own queues and its own simulator.

- ``defaults``: what scaling out the obvious way gives (a Procfile, ``docker compose --scale``): **3** workers
  started with one environment and nothing fleet-specific (no REDIS_URL, no PARTITIONS, no RATE_LIMIT: every
  setting at its default) against a simulator allowing the credential the real API's **100** calls a minute. Each
  worker's limiter allows the default 1.5 calls/s, so the fleet asks for 2.7 times what the API allows: the 429s
  and how the workers' limiters back off from them are part of what is measured. 15,000 requests over 50
  projects: 150 calls at least, a minute and a half of the API's budget, so the limit is met.

Two ways to share the budget as the README tells a fleet to, 4 workers against 240 calls a minute, 8,000 requests
over 15 projects, with ``PARTITIONS=16``:

- ``redis``: every worker gets ``SNAPWORKER_REDIS_URL`` (a database of its own, flushed first) and the whole
  budget, ``RATE_LIMIT = (240 - RATE_BURST) / 60`` per second with the default RATE_BURST 5, so that no 60 s
  window can hold more than 240 calls; the workers' shared limiter divides it. Skipped (and said so) while
  ``snapworker.cloud.shared_limiter`` does not exist: without it each worker would spend the whole budget.
- ``shares``: no Redis; each worker ``RATE_LIMIT`` = that budget / 4 and ``RATE_BURST=1``.

Rounded down to 4 decimals, so the budget is never exceeded by rounding.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any
from urllib.parse import urlsplit

from bench.broker import check_loopback
from bench.limited import API_PER_MINUTE, Workload, run_bound
from bench.ratebound import add_drain_figures
from bench.report import budget_rate, floor_setting
from bench.scenarios import Context

__all__ = ["FLEET_MODES", "RedisDb", "fleet", "fleet_budget", "fleet_settings"]

FLEET_MODES = ("defaults", "redis", "shares")
FLEET_WORKERS = 4
FLEET_PER_MINUTE = 240
#: the ``defaults`` mode: workers started with one environment, against the real API's limit
DEFAULTS_WORKERS = 3
FLEET_PARTITIONS = 16
DEFAULT_RATE_BURST = 5
FLEET_TIMEOUT_S = 180.0
#: the defaults mode's 150 calls take 90 s at 100 a minute, and the 429s of its over-asking fleet add pauses
DEFAULTS_TIMEOUT_S = 300.0
SHARED_LIMITER_MODULE = "snapworker.cloud.shared_limiter"


def fleet_settings(
    mode: str, redis_url: str, workers: int = FLEET_WORKERS, per_minute: int = FLEET_PER_MINUTE
) -> list[dict[str, str]]:
    """The SNAPWORKER_* overrides of each worker of the fleet in ``mode`` (``defaults``: none at all)."""
    if mode == "defaults":
        return [{} for _ in range(DEFAULTS_WORKERS)]
    budget = budget_rate(per_minute, DEFAULT_RATE_BURST)
    # what the README tells a fleet to set: each project's requests meet in one worker
    partitions = {"partitions": str(FLEET_PARTITIONS)}
    if mode == "redis":
        return [{"redis_url": redis_url, "rate_limit": floor_setting(budget)} | partitions for _ in range(workers)]
    if mode == "shares":
        return [{"rate_limit": floor_setting(budget / workers), "rate_burst": "1"} | partitions for _ in range(workers)]
    raise ValueError(f"unknown fleet mode {mode!r}; choose from {', '.join(FLEET_MODES)}")


def fleet_budget(mode: str, settings: list[dict[str, str]]) -> tuple[float, int]:
    """(calls per second, burst) the whole fleet may spend: one shared bucket, the sum of the shares, or (for
    ``defaults``) what the API admits, since the workers' own limits add up to more."""
    if mode == "defaults":
        return budget_rate(API_PER_MINUTE, DEFAULT_RATE_BURST), DEFAULT_RATE_BURST
    if mode == "redis":
        return float(settings[0]["rate_limit"]), int(settings[0].get("rate_burst", DEFAULT_RATE_BURST))
    rate = sum(float(s["rate_limit"]) for s in settings)
    return rate, sum(int(s.get("rate_burst", DEFAULT_RATE_BURST)) for s in settings)


class RedisDb:
    """Just enough RESP to flush one database and count its keys (no client library needed), loopback only."""

    def __init__(self, url: str) -> None:
        check_loopback(url)
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.db = int(parts.path.strip("/") or 0)
        self.password = parts.password

    async def command(self, *args: str) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout=5)
        commands: list[tuple[str, ...]] = [("AUTH", self.password)] if self.password else []
        commands += [("SELECT", str(self.db)), args]
        try:
            for command in commands:
                writer.write(_encode(command))
            await writer.drain()
            replies = [await asyncio.wait_for(_reply(reader), timeout=10) for _ in commands]
        finally:
            writer.close()
            await writer.wait_closed()
        return replies[-1]


def _encode(args: tuple[str, ...]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _reply(reader: asyncio.StreamReader) -> str:
    line = (await reader.readline()).decode().rstrip("\r\n")
    kind, rest = line[:1], line[1:]
    if kind == "-":
        raise RuntimeError(f"redis: {rest}")
    if kind == "$":
        size = int(rest)
        return "" if size < 0 else (await reader.readexactly(size + 2))[:-2].decode()
    if kind in ("+", ":"):
        return rest
    raise RuntimeError(f"redis: unexpected reply {line!r}")


async def fleet_mode(ctx: Context, run_index: int, mode: str) -> dict[str, Any]:
    sizes = ctx.sizes
    settings = fleet_settings(mode, ctx.redis_url)
    if mode == "defaults":
        per_minute, workload = API_PER_MINUTE, Workload(sizes.fleet_defaults_requests, sizes.fleet_defaults_projects)
        timeout_s = DEFAULTS_TIMEOUT_S
    else:
        per_minute, workload = FLEET_PER_MINUTE, Workload(sizes.fleet_requests, sizes.fleet_projects)
        timeout_s = FLEET_TIMEOUT_S
    redis = RedisDb(ctx.redis_url) if mode == "redis" else None

    async def flush() -> dict[str, str]:
        assert redis is not None
        return {"ping": await redis.command("PING"), "flushdb": await redis.command("FLUSHDB")}

    async def keys() -> dict[str, int]:
        assert redis is not None
        return {"redis_keys": int(await redis.command("DBSIZE"))}

    data = await run_bound(
        ctx,
        name=f"fleet-{mode}-r{run_index}",
        workload=workload,
        per_minute=per_minute,
        workers=settings,
        timeout_s=ctx.bound_timeout_s or timeout_s,
        before_spawn=flush if redis else None,
        while_running=keys if redis else None,
    )
    if redis is not None:
        await redis.command("FLUSHDB")  # leave the database as found: empty
    rate, burst = fleet_budget(mode, settings)
    add_drain_figures(data, rate, burst)
    data["mode"] = mode
    data["workers"] = len(settings)
    data["allowed_in_any_60_s"] = per_minute
    data["calls_429_share"] = data["calls_429"] / data["calls_total"] if data["calls_total"] else None
    data["budget_in_60_s"] = burst + rate * 60
    return data


async def fleet(ctx: Context, run_index: int) -> dict[str, Any]:
    """The modes in ``ctx.fleet_modes``, one after the other."""
    out: dict[str, Any] = {"modes": list(ctx.fleet_modes)}
    for mode in ctx.fleet_modes:
        if mode == "redis" and importlib.util.find_spec(SHARED_LIMITER_MODULE) is None:
            out[mode] = {"skipped": f"{SHARED_LIMITER_MODULE} does not exist yet: REDIS_URL would do nothing"}
            continue
        out[mode] = await fleet_mode(ctx, run_index, mode)
    return out
