"""Rate-bound backlogs: one worker at its DEFAULT settings against a simulator enforcing the real 100 calls/min.

- ``ratebound``: 5,000 single-desktop requests over 12 projects x 2 snapshot settings (24 merge keys).
- ``ratebound100``: 5,000 over 100 projects x 2 settings (200 merge keys: 25 desktops each, 200 calls at best).
- ``throttled``: the worker configured 5x above the API's limit (RATE_LIMIT=8.33, RATE_BURST=5), 3,000 requests
  over 150 projects (at least 150 calls: more than the API allows in a minute): the 429s must cost no request.

The drain time is compared with the least time the worker's own token bucket allows for the fewest calls:
``(minimum calls - RATE_BURST) / RATE_LIMIT`` (1.5/s and 5 by default, read from the worker's settings line).
"""

from __future__ import annotations

from typing import Any

from bench.limited import API_PER_MINUTE, Workload, run_bound, settings_value
from bench.report import ideal_drain_s
from bench.scenarios import Context

__all__ = ["add_drain_figures", "ratebound", "ratebound100", "throttled"]

DEFAULT_RATE_LIMIT = 1.5
DEFAULT_RATE_BURST = 5
THROTTLED_SETTINGS = {"rate_limit": "8.33", "rate_burst": "5"}
MIN_TIMEOUT_S = 180.0


def timeout_for(workload: Workload, rate: float = DEFAULT_RATE_LIMIT, burst: int = DEFAULT_RATE_BURST) -> float:
    """Generous but bounded: at least 180 s, else twice the ideal drain plus 30 s."""
    return max(MIN_TIMEOUT_S, 2 * ideal_drain_s(workload.minimum_calls(), rate, burst) + 30)


def add_drain_figures(data: dict[str, Any], rate: float | None = None, burst: float | None = None) -> None:
    """The ideal drain time (from the worker's logged RATE_LIMIT and RATE_BURST unless given) and the ratio."""
    rate = rate if rate is not None else settings_value(data, "RATE_LIMIT", DEFAULT_RATE_LIMIT)
    burst = burst if burst is not None else settings_value(data, "RATE_BURST", DEFAULT_RATE_BURST)
    data["ideal_rate_limit"] = rate
    data["ideal_rate_burst"] = burst
    data["ideal_drain_s"] = ideal_drain_s(int(data["calls_minimum"]), rate, int(burst))
    seconds = data.get("seconds")
    data["drain_vs_ideal"] = seconds / data["ideal_drain_s"] if seconds and data["ideal_drain_s"] else None
    hwm = [v for v in data.get("vm_hwm_mb") or () if v is not None]
    data["vm_hwm_mb_max"] = max(hwm, default=None)


async def _one_worker(ctx: Context, name: str, workload: Workload, overrides: dict[str, str]) -> dict[str, Any]:
    timeout_s = ctx.bound_timeout_s or timeout_for(workload)
    data = await run_bound(
        ctx, name=name, workload=workload, per_minute=API_PER_MINUTE, workers=[overrides], timeout_s=timeout_s
    )
    add_drain_figures(data)
    return data


async def ratebound(ctx: Context, run_index: int) -> dict[str, Any]:
    sizes = ctx.sizes
    workload = Workload(sizes.ratebound_requests, sizes.ratebound_projects, variants=2)
    return await _one_worker(ctx, f"ratebound-r{run_index}", workload, {})


async def ratebound100(ctx: Context, run_index: int) -> dict[str, Any]:
    sizes = ctx.sizes
    workload = Workload(sizes.ratebound100_requests, sizes.ratebound100_projects, variants=2)
    return await _one_worker(ctx, f"ratebound100-r{run_index}", workload, {})


async def throttled(ctx: Context, run_index: int) -> dict[str, Any]:
    sizes = ctx.sizes
    workload = Workload(sizes.throttled_requests, sizes.throttled_projects)
    data = await _one_worker(ctx, f"throttled-r{run_index}", workload, dict(THROTTLED_SETTINGS))
    data["calls_429_share"] = data["calls_429"] / data["calls_total"] if data["calls_total"] else None
    return data
