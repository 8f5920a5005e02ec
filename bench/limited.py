"""Rate-bound runs: worker processes at their own defaults against a simulator that enforces the API's limit.

Each run gets a simulator process of its own, started with ``--rate-per-minute`` and a fresh token (the limit is
per user, and a fresh process starts with empty windows and statistics), fresh queues, and a backlog published
before the first worker starts. The clock runs from the first worker's spawn until the result and error queues
hold one message per request. Then, outside the timing: the request queue must show 0 ready and 0 unacked, the
simulator's statistics are read, the workers are stopped, and every result is read back to check that each
request got exactly one and to count their statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.broker import DEFAULT_PARTITIONS, Broker, Message, Queues, check_loopback
from bench.infra import SimProcess, parse_settings_line, parse_totals, verify_drained
from bench.procs import Measured, find_pid, wait_until_quiet
from bench.report import minimum_calls_of_requests
from bench.scenarios import PUBLISH_IN_FLIGHT, Context

__all__ = [
    "API_PER_MINUTE",
    "SETTINGS_VARIANTS",
    "Workload",
    "add_call_figures",
    "answered_once",
    "brief",
    "limited_sim",
    "lost",
    "run_bound",
    "settings_value",
    "tally",
]

#: The real API's limit: batch-create calls per minute per user (credential).
API_PER_MINUTE = 100
#: The snapshot settings a workload cycles through, as JSON members added to each request body.
SETTINGS_VARIANTS = ("", ',"system_disk_snapshot":{"name":"nightly"}')
TIMELINE_EVERY_S = 2.0


@dataclass(frozen=True)
class Workload:
    """``n`` single-desktop requests, round-robin over ``projects`` x ``variants`` merge keys, desktops distinct."""

    n: int
    projects: int
    variants: int = 1

    @property
    def keys(self) -> int:
        return self.projects * self.variants

    def messages(self, tag: str) -> list[Message]:
        out: list[Message] = []
        for i in range(self.n):
            key = i % self.keys
            project, variant = key % self.projects, key // self.projects
            body = (
                f'{{"project_id":"p{project:03d}-{tag}","desktop_ids":["d-{tag}-{i:07d}"]{SETTINGS_VARIANTS[variant]}}}'
            )
            out.append((body.encode(), str(i)))
        return out

    def minimum_calls(self, answered: Iterable[str] | None = None, max_batch: int = 100) -> int:
        """The fewest calls for every request (or only those whose correlation_id is in ``answered``)."""
        messages = self.messages("t")
        if answered is not None:
            wanted = set(answered)
            messages = [m for m in messages if m[1] in wanted]
        return minimum_calls_of_requests((body for body, _ in messages), max_batch)


def tally(results: Iterable[tuple[str | None, str | None]], expected: Iterable[str]) -> dict[str, Any]:
    """Results read back, against the correlation_ids published: statuses, missing, duplicated, unknown."""
    per_id: Counter[str | None] = Counter()
    statuses: Counter[str] = Counter()
    for correlation_id, status in results:
        per_id[correlation_id] += 1
        statuses[status or "unknown"] += 1
    wanted = set(expected)
    return {
        "results": sum(per_id.values()),
        "statuses": dict(statuses),
        "requests_failed": statuses.get("failed", 0),
        "missing": sum(1 for c in wanted if per_id[c] == 0),
        "duplicated": sum(n - 1 for c, n in per_id.items() if c in wanted and n > 1),
        "unknown": sum(n for c, n in per_id.items() if c not in wanted),
    }


@contextlib.asynccontextmanager
async def limited_sim(ctx: Context, log_name: str, per_minute: int | None) -> AsyncIterator[SimProcess]:
    """A simulator process of its own, enforcing ``per_minute`` calls per user, with a fresh token."""
    sim = await SimProcess.start(
        ctx.log_dir / f"{log_name}.log", token=f"bench-token-{uuid.uuid4().hex}", rate_per_minute=per_minute
    )
    check_loopback(sim.url)
    try:
        yield sim
    finally:
        await sim.stop()


async def _until_done(
    broker: Broker, queues: Queues, procs: Sequence[Measured], expected: int, timeout_s: float
) -> dict[str, Any]:
    """Poll (about 20 times a second) until every result is in, a worker dies, or the timeout; RSS sampled."""
    started = min(p.started for p in procs)
    names = [queues.request, queues.result, queues.error]
    out: dict[str, Any] = {"outcome": "ok", "seconds": None, "consuming_after_s": None, "timeline": []}
    results, tick, next_mark = 0, 0, 0.0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed > timeout_s:
            out["outcome"] = "timeout"
            break
        if not all(p.alive() for p in procs):
            out["outcome"] = "died"
            break
        (_, consumers), (done, _), (errors, _) = await broker.counts(names)
        results = done + errors
        if out["consuming_after_s"] is None and consumers >= len(procs):
            out["consuming_after_s"] = round(elapsed, 2)
        if elapsed >= next_mark:
            out["timeline"].append((round(elapsed, 1), results))
            next_mark += TIMELINE_EVERY_S
        if results >= expected:
            out["seconds"] = time.perf_counter() - started
            break
        if tick % 2 == 0:
            for proc in procs:
                proc.rss_mb()
        tick += 1
        await asyncio.sleep(0.05)
    out["results_in_queues"] = results
    out["elapsed_s"] = round(time.perf_counter() - started, 2)
    return out


_SIM_KEYS = (
    "calls_total",
    "calls_by_status",
    "max_calls_in_one_second",
    "max_calls_in_any_60_s",
    "max_arrivals_in_any_60_s",
    "batch_sizes",
    "distinct_desktops",
)


async def run_bound(
    ctx: Context,
    *,
    name: str,
    workload: Workload,
    per_minute: int | None,
    workers: Sequence[Mapping[str, str]],
    timeout_s: float,
    before_spawn: Callable[[], Awaitable[Any]] | None = None,
    while_running: Callable[[], Awaitable[Any]] | None = None,
    during: Callable[[Queues, str], Coroutine[Any, Any, Any]] | None = None,
) -> dict[str, Any]:
    """Publish ``workload``, run one worker per entry of ``workers`` (its SNAPWORKER_* overrides; the rest
    default) against a simulator limited to ``per_minute``, until every result is in; everything measured.

    ``before_spawn`` and ``while_running`` (async callables, optional) run just before the first spawn and
    just after the last result is in (e.g. to flush Redis, and to read what the workers left there).
    ``during(queues, tag)`` runs beside the workers from their spawn (``tag`` names the workload's projects,
    ``p000-<tag>``...); what it returns is ``data["during"]`` once the last result is in.
    """
    # the partition queues of the workers (their setting, or its default), to delete them too
    partitions = max((int(w.get("partitions", DEFAULT_PARTITIONS)) for w in workers), default=DEFAULT_PARTITIONS)
    queues = Queues.fresh(name, partitions)
    tag = uuid.uuid4().hex[:6]
    messages = workload.messages(tag)
    data: dict[str, Any] = {"requests": workload.n, "projects": workload.projects, "variants": workload.variants}
    data["merge_keys"] = workload.keys
    data["settings_overrides"] = [dict(w) for w in workers]
    data["timeout_s"] = timeout_s
    await ctx.broker.declare(queues)
    try:
        started = time.perf_counter()
        await ctx.broker.publish_many(
            queues.request, messages, in_flight=PUBLISH_IN_FLIGHT, timeout_s=max(120.0, workload.n / 200)
        )
        data["publish_s"] = round(time.perf_counter() - started, 2)
        data["broker_quiet_wait_s"] = await wait_until_quiet(find_pid("beam.smp"))
        async with limited_sim(ctx, f"{name}-simulator", per_minute) as sim:
            data["simulator_rate_per_minute"] = per_minute
            if before_spawn is not None:
                data["before_spawn"] = await before_spawn()
            procs: list[Measured] = []
            beside: asyncio.Task[Any] | None = None
            try:
                for j, overrides in enumerate(workers):
                    procs.append(ctx.spawn("worker", queues, f"{name}-worker{j}", overrides, sim=sim, base={}))
                beside = asyncio.create_task(during(queues, tag)) if during is not None else None
                data |= await _until_done(ctx.broker, queues, procs, workload.n, timeout_s)
                if beside is not None:
                    data["during"] = await beside
                if data["outcome"] == "ok":
                    data["request_queue_after"] = await verify_drained(queues.request)
                if while_running is not None:
                    data["while_running"] = await while_running()
                stats = await sim.stats()
                data["sim"] = {k: stats.get(k) for k in _SIM_KEYS}
                data["vm_hwm_mb"] = [p.hwm_mb() for p in procs]
                data["peak_rss_sampled_mb"] = [round(p.peak_rss_sampled_mb, 1) for p in procs]
                data["cpu_s"] = [p.cpu_s() for p in procs]
            finally:
                if beside is not None:
                    beside.cancel()
                data["exit_codes"] = list(await asyncio.gather(*(p.stop() for p in procs)))
            after = await sim.stats()
            data["calls_after_stop"] = int(after.get("calls_total") or 0) - int(data["sim"]["calls_total"] or 0)
        logs = [p.log_text() for p in procs]
        data["logs"] = [str(p.log_path) for p in procs]
        data["totals"] = [parse_totals(log, "worker totals ") for log in logs]
        data["settings_seen"] = [_settings_subset(parse_settings_line(log)) for log in logs]
        # a stopped worker requeues what it held to the queue it came from: the request queue or a partition
        data["request_queue_ready_after_stop"] = sum(n for n, _ in await ctx.broker.counts(queues.request_queues()))
        read = await ctx.broker.collect([queues.result, queues.error])
        data |= tally(read, (cid for _, cid in messages))
        answered = {cid for cid, _ in read if cid is not None}
    finally:
        await ctx.broker.delete(queues)
    add_call_figures(data, workload, answered)
    return data


def add_call_figures(data: dict[str, Any], workload: Workload, answered: Iterable[str]) -> None:
    """Calls, 429s, the minimum, the economy, and what became of requests not answered."""
    sim = data.get("sim") or {}
    calls = int(sim.get("calls_total") or 0)
    data["calls_total"] = calls
    data["calls_429"] = int((sim.get("calls_by_status") or {}).get("429", 0))
    data["calls_minimum"] = workload.minimum_calls()
    sent = sum(int(size) * count for size, count in (sim.get("batch_sizes") or {}).items())
    data["desktops_per_call"] = sent / calls if calls else None
    data["desktops_per_call_best"] = workload.n / data["calls_minimum"]
    if data.get("outcome") == "ok":
        data["economy"] = data["calls_minimum"] / calls if calls else None
    else:
        # Cut short by the timeout: projected from the desktops per call so far against the best possible
        # (the minimum over only the requests answered would flatter nothing and mislead: keys stay half-used).
        per_call = data["desktops_per_call"]
        data["economy"] = per_call / data["desktops_per_call_best"] if per_call is not None else None
        data["economy_projected"] = True
        data["calls_minimum_answered"] = workload.minimum_calls(answered)
    missing, left = int(data.get("missing") or 0), int(data.get("request_queue_ready_after_stop") or 0)
    data["lost"] = max(0, missing - left)  # neither answered nor back in the request queue


def _settings_subset(seen: Mapping[str, str]) -> dict[str, str]:
    wanted = ("RATE_LIMIT", "RATE_BURST", "PREFETCH", "PREFETCH_MAX", "LINGER_MS", "HOLD_MAX_MS", "MAX_CONCURRENCY")
    out = {k: seen[k] for k in wanted if k in seen}
    if "REDIS_URL" in seen:
        out["REDIS_URL"] = "set" if seen["REDIS_URL"] not in ("None", "") else "unset"
    return out


def lost(data: Mapping[str, Any]) -> bool:
    """Whether a run lost or duplicated anything: a request neither answered nor back in the request queue, a
    request answered twice, or a result for nothing published. (Unanswered requests a worker put back in the
    queue when it was stopped at a timeout are not lost, only unfinished.)"""
    missing, left = int(data.get("missing") or 0), int(data.get("request_queue_ready_after_stop") or 0)
    return missing > left or bool(data.get("duplicated") or data.get("unknown"))


def answered_once(data: Mapping[str, Any]) -> bool:
    """Every request answered exactly once and the request queue empty (ready and unacked) at the end."""
    after = data.get("request_queue_after") or {}
    return (
        data.get("outcome") == "ok"
        and not lost(data)
        and not data.get("missing")
        and not data.get("request_queue_ready_after_stop")
        and after.get("ready") == 0
        and after.get("unacked") == 0
    )


def settings_value(data: Mapping[str, Any], name: str, default: float) -> float:
    """A setting the (first) worker logged at start-up, or ``default``."""
    for seen in data.get("settings_seen") or ():
        if name in seen:
            with contextlib.suppress(ValueError):
                return float(seen[name])
    return default


def brief(name: str, data: Mapping[str, Any]) -> str:
    """One progress line of a rate-bound run."""
    drain = f"{data['seconds']:.1f} s" if data.get("seconds") else f"{data.get('outcome')} at {data.get('elapsed_s')} s"
    economy = data.get("economy")
    shown = "n/a" if economy is None else f"{economy:.3f}{' projected' if data.get('economy_projected') else ''}"
    return (
        f"{name}: {drain}, calls {data.get('calls_total')} (min {data.get('calls_minimum')}, economy {shown}), "
        f"429s {data.get('calls_429')}, statuses {json.dumps(data.get('statuses'))}, unanswered "
        f"{data.get('missing')} ({data.get('request_queue_ready_after_stop')} back in the queue), lost "
        f"{data.get('lost')}, duplicated {data.get('duplicated')}"
    )
