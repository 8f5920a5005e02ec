"""Following jobs to their end: 10,000 desktops created in 100 jobs, tracked to completion (issue 13).

One project, 10,000 single-desktop requests, a simulator enforcing the real 100 batch-create calls a minute whose
jobs run ``JOB_DURATION_S``: the worker at its defaults creates 100 jobs of 100 desktops and follows them. Two
runs of the same backlog, each with a fresh simulator and fresh queues: tracking off, then on. Figures:

- GET calls made (job reads and sub-job pages, the simulator's count) against the minimum, one read per job per
  poll round: the rounds are the looks the tracking took (its ``tracking totals`` line), each at one job here
  (a batch outcome finishes the requests of one job). Polling per request instead would cost 100 times that.
- batch-create's pace with tracking on against off: the drain time (first spawn to the last result) and the most
  calls in any 60 s; tracking reads have a budget of their own, so these must not move.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

from bench.broker import Queues
from bench.infra import SimProcess, parse_totals
from bench.limited import API_PER_MINUTE, Workload
from bench.procs import Measured
from bench.scenarios import PUBLISH_IN_FLIGHT, Context

__all__ = ["tracking"]

DESKTOPS = 10_000
JOB_DURATION_S = 25.0
TIMEOUT_S = 360.0


async def _counts(ctx: Context, names: list[str]) -> list[int]:
    return [ready for ready, _ in await ctx.broker.counts(names)]


async def _phase(ctx: Context, name: str, track: bool) -> dict[str, Any]:
    queues = Queues.fresh(name)
    prefix = queues.request.removesuffix(".requests")
    tracking_queue, completion_queue = f"{prefix}.tracking", f"{prefix}.completions"
    workload = Workload(DESKTOPS, 1)
    messages = workload.messages(uuid.uuid4().hex[:6])
    out: dict[str, Any] = {"tracking": track, "requests": DESKTOPS}
    await ctx.broker.declare(queues)
    sim = await SimProcess.start(
        ctx.log_dir / f"{name}-simulator.log",
        token=f"bench-token-{uuid.uuid4().hex}",
        rate_per_minute=API_PER_MINUTE,
        extra_args=["--job-duration-s", str(JOB_DURATION_S)],
    )
    proc: Measured | None = None
    try:
        await ctx.broker.publish_many(queues.request, messages, in_flight=PUBLISH_IN_FLIGHT, timeout_s=120.0)
        overrides = {"track_jobs": "true" if track else "false"}
        overrides |= {"tracking_queue": tracking_queue, "completion_queue": completion_queue}
        proc = ctx.spawn("worker", queues, f"{name}-worker", overrides, sim=sim, base={})
        started = time.perf_counter()
        while sum(await _counts(ctx, [queues.result, queues.error])) < DESKTOPS:
            if time.perf_counter() - started > TIMEOUT_S or not proc.alive():
                out["outcome"] = "timeout or died"
                return out
            await asyncio.sleep(0.1)
        out["drain_s"] = round(time.perf_counter() - started, 2)
        if track:
            while (await _counts(ctx, [completion_queue]))[0] < DESKTOPS:
                if time.perf_counter() - started > TIMEOUT_S or not proc.alive():
                    out["outcome"] = "completions timed out"
                    break
                await asyncio.sleep(0.2)
            out["completions"] = (await _counts(ctx, [completion_queue]))[0]
            out["all_completed_s"] = round(time.perf_counter() - started, 2)
            await asyncio.sleep(2.0)  # a duplicate would come after the last first one: give it time to show
            got = await ctx.broker.collect([completion_queue])
            # a completion carries its request's correlation_id: exactly one per request is DESKTOPS distinct ones
            out["completions_collected"] = len(got)
            out["requests_with_a_completion"] = len({correlation for correlation, _ in got})
            out["completion_statuses"] = dict(Counter(status for _, status in got))
        stats = await sim.stats()
        out["batch_create_calls"] = stats.get("calls_total")
        out["max_calls_in_any_60_s"] = stats.get("max_calls_in_any_60_s")
        out["jobs"] = stats.get("jobs_created")
        out["get_calls"] = int(stats.get("job_queries") or 0) + int(stats.get("sub_job_queries") or 0)
    finally:
        if proc is not None:
            await proc.stop()
            totals = parse_totals(proc.log_text(), "tracking totals ")
            if totals:
                out["tracking_totals"] = totals
                out["get_minimum"] = totals.get("looks")  # one read per job per round: one job per unit here
        await sim.stop()
        await ctx.broker.delete(queues)
        channel = await ctx.broker._conn.channel()
        try:
            for queue in await _tracking_queue_names(tracking_queue, completion_queue):
                await channel.queue_delete(queue)
        finally:
            await channel.close()
    out.setdefault("outcome", "ok")
    return out


async def _tracking_queue_names(tracking_queue: str, completion_queue: str) -> list[str]:
    from snapworker.settings import Settings
    from snapworker.tracking.loop import tracking_queues

    return tracking_queues(Settings(tracking_queue=tracking_queue, completion_queue=completion_queue))


async def tracking(ctx: Context, run_index: int) -> dict[str, Any]:
    off = await _phase(ctx, f"tracking-off-r{run_index}", track=False)
    on = await _phase(ctx, f"tracking-on-r{run_index}", track=True)
    data: dict[str, Any] = {"off": off, "on": on, "job_duration_s": JOB_DURATION_S}
    if on.get("get_minimum"):
        data["get_vs_minimum"] = on["get_calls"] / on["get_minimum"]
        data["get_per_request_polling"] = on["get_minimum"] * (DESKTOPS // max(1, int(on.get("jobs") or 1)))
    if off.get("drain_s") and on.get("drain_s"):
        data["drain_on_vs_off"] = on["drain_s"] / off["drain_s"]
    return data


def brief(data: dict[str, Any]) -> str:
    on, off = data["on"], data["off"]
    return (
        f"tracking: {on.get('jobs')} jobs, {on.get('completions_collected')} completions for "
        f"{on.get('requests_with_a_completion')} requests ({on.get('completion_statuses')}) in "
        f"{on.get('all_completed_s')} s; "
        f"GET calls {on.get('get_calls')} (minimum {on.get('get_minimum')}); batch-create drain "
        f"{on.get('drain_s')} s on vs {off.get('drain_s')} s off, most calls in 60 s "
        f"{on.get('max_calls_in_any_60_s')} vs {off.get('max_calls_in_any_60_s')}"
    )
