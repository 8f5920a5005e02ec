"""A light steady load (a trickle): latency from publish to result, and API economy when batches cannot fill.

The worker is started first and waited for; then requests are published as a Poisson process (e.g. 20 a second
on average for 15 s, seeded per run, round-robin over 5 projects), each with its sequence number as
correlation_id. Random gaps matter: with a fixed 250 ms gap per project and LINGER_MS=250 every arrival would
sit exactly on a window's edge. The benchmark consumes
the result and error queues itself and notes each result's arrival: latency = arrival - publish, on the
benchmark's own monotonic clock. At this load no batch can fill, so every batch must be flushed by the linger
timer; the fewest calls possible is computed per linger window from the actual publish times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from bench.broker import Queues
from bench.infra import SimProcess, parse_settings_line, parse_totals
from bench.limited import API_PER_MINUTE, limited_sim
from bench.report import minimum_calls_with_linger, percentile
from bench.scenarios import Context

__all__ = ["latency_defaults", "steady", "steady_load"]


async def _wait_consuming(ctx: Context, queues: Queues, alive: Any, timeout_s: float) -> float:
    """Until the request queue and every partition of it have a consumer (a partitioned worker routes at once and
    claims its partitions after): the seconds that took."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        counts = await ctx.broker.counts(queues.request_queues())
        if all(consumers > 0 for _, consumers in counts):
            return time.perf_counter() - started
        if not alive():
            break
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the worker did not start consuming {queues.request!r} within {timeout_s:.0f} s")


async def steady(ctx: Context, run_index: int) -> dict[str, Any]:
    """The bench's worker settings (RATE_LIMIT 1000) against the unlimited simulator: the worker's own latency."""
    sizes = ctx.sizes
    return await steady_load(
        ctx,
        f"steady-r{run_index}",
        seed=1000 + run_index,
        rate=sizes.steady_rate,
        seconds=sizes.steady_seconds,
        projects=sizes.steady_projects,
        sim=ctx.sim,
        base=None,
    )


async def latency_defaults(ctx: Context, run_index: int) -> dict[str, Any]:
    """The worker at its DEFAULT settings against a simulator enforcing the real 100 calls a minute."""
    sizes = ctx.sizes
    async with limited_sim(ctx, f"latency_defaults-r{run_index}-simulator", API_PER_MINUTE) as sim:
        data = await steady_load(
            ctx,
            f"latency_defaults-r{run_index}",
            seed=2000 + run_index,
            rate=sizes.light_rate,
            seconds=sizes.light_seconds,
            projects=sizes.light_projects,
            sim=sim,
            base={},
        )
    data["simulator_rate_per_minute"] = API_PER_MINUTE
    return data


async def steady_load(
    ctx: Context,
    name: str,
    *,
    seed: int,
    rate: float,
    seconds: float,
    projects: int,
    sim: SimProcess,
    base: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Poisson arrivals at ``rate`` a second for ``seconds`` over ``projects``, the worker (settings ``base``,
    None = the bench's) already consuming, against ``sim``: latency of every request, calls, flush reasons."""
    n = int(rate * seconds)
    queues = Queues.fresh(name)
    await ctx.broker.declare(queues)
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    all_in = asyncio.Event()

    def on_result(message: AbstractIncomingMessage) -> None:
        cid = message.correlation_id or ""
        arrived.setdefault(cid, time.perf_counter())
        if len(arrived) >= n:
            all_in.set()

    try:
        await sim.reset()
        proc = ctx.spawn("worker", queues, f"{name}-worker", {}, sim=sim, base=base)
        publishes: set[asyncio.Task[None]] = set()
        try:
            consuming_after_s = await _wait_consuming(ctx, queues, proc.alive, 60.0)
            subscription = await ctx.broker.subscribe([queues.result, queues.error], on_result)
            rng = random.Random(seed)
            offsets = list(itertools.accumulate(rng.expovariate(rate) for _ in range(n)))
            begin = time.perf_counter()
            for i, offset in enumerate(offsets):
                delay = begin + min(offset, 2 * seconds) - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = f'{{"project_id":"p{i % projects:03d}-{tag}","desktop_ids":["d-{tag}-{i:07d}"]}}'
                sent[str(i)] = time.perf_counter()
                task = asyncio.create_task(ctx.broker.publish_one(queues.request, (body.encode(), str(i))))
                publishes.add(task)
                task.add_done_callback(publishes.discard)
            publish_s = time.perf_counter() - begin
            await asyncio.gather(*publishes)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_in.wait(), timeout=30.0)
            cpu_s = proc.cpu_s()
            await subscription.close()
        finally:
            exit_code = await proc.stop()
        stats = await sim.stats()
    finally:
        await ctx.broker.delete(queues)
    log = proc.log_text()
    linger_s = int(parse_settings_line(log).get("LINGER_MS", "250")) / 1000
    latencies_ms = [(arrived[c] - t) * 1000 for c, t in sent.items() if c in arrived]
    project_of = {str(i): i % projects for i in range(n)}
    calls_minimum = minimum_calls_with_linger(((project_of[c], t) for c, t in sent.items()), linger_s)
    calls = int(stats.get("calls_total") or 0)
    totals = parse_totals(log, "worker totals ")
    return {
        "requests": n,
        "results": len(arrived),
        "publish_s": round(publish_s, 2),
        "partitions": queues.partitions,
        "consuming_every_partition_after_s": round(consuming_after_s, 2),
        "rate_per_s": rate,
        "projects": projects,
        "linger_ms": linger_s * 1000,
        "settings_base": "bench" if base is None else dict(base),
        "latency_ms": {
            "p50": percentile(latencies_ms, 50),
            "p90": percentile(latencies_ms, 90),
            "p99": percentile(latencies_ms, 99),
            "max": max(latencies_ms, default=None),
            "min": min(latencies_ms, default=None),
        },
        "calls_total": calls,
        "calls_minimum_with_linger": calls_minimum,
        "economy": calls_minimum / calls if calls else None,
        "batches_by_reason": (totals or {}).get("batches_by_reason"),
        "batch_sizes": stats.get("batch_sizes"),
        "calls_by_status": stats.get("calls_by_status"),
        "cpu_s": cpu_s,
        "exit_code": exit_code,
        "totals": totals,
        "log": str(proc.log_path),
    }
