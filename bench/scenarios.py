"""Backlog scenarios: throughput (worker with its idempotency store on and off, both baselines, same run), backlog
economy, CPU, and memory.

A backlog is published (pipelined confirms) to a fresh request queue *before* the measured process starts; the
clock runs from its spawn to the moment the result and error queues hold one message per request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.broker import Broker, Message, Queues
from bench.infra import Drive, SimProcess, drive, parse_settings_line, parse_totals, verify_drained
from bench.procs import CpuWatch, Measured, find_pid, snapworker_env, wait_until_quiet
from bench.report import minimum_calls
from bench.tracked import TrackingQueues

__all__ = [
    "STORE_PAIRS",
    "SYSTEMS",
    "WORKERS",
    "Context",
    "Sizes",
    "backlog",
    "measure_backlog",
    "rotated",
    "throughput_order",
]

T = TypeVar("T")

SYSTEMS = ("worker", "nostore", "notrack", "noapi", "perapi")
#: the systems that are snapworker: "worker" as users run it (the idempotency store on, job tracking on and every
#: completion asked for), "nostore" with IDEMPOTENCY_STORE=off, "notrack" with TRACK_JOBS=false (what each costs)
WORKERS = frozenset({"worker", "nostore", "notrack"})
#: the workers whose requests' completions are asked for (SNAPWORKER_COMPLETION_QUEUE set, as for a user who
#: watches them): their CPU is also read once the last completion is published
TRACKED = frozenset({"worker", "nostore"})
PUBLISH_IN_FLIGHT = 1000
#: Extra (worker, nostore) pairs per throughput run. The store's price is a small difference between two noisy
#: figures: on 2 cores the broker's CPU for the same backlog varies up to 3x from one drain to the next, and
#: single on/off ratios ranged 0.72x-1.28x. So it is measured on more pairs than the baselines get runs, each
#: pair back to back (the same machine conditions for both), the order alternating from pair to pair.
STORE_PAIRS = 2


@dataclass(frozen=True)
class Sizes:
    throughput: int = 20_000
    projects: int = 50
    memory: int = 200_000
    steady_rate: float = 20.0
    steady_seconds: float = 15.0
    steady_projects: int = 5
    rate_requests: int = 1_500
    rate_projects: int = 10
    # the rate-bound regime: worker defaults against the API's real limit
    ratebound_requests: int = 5_000
    ratebound_projects: int = 12
    ratebound100_requests: int = 5_000
    ratebound100_projects: int = 100
    fleet_requests: int = 8_000
    fleet_projects: int = 15
    # the fleet at defaults against 100 calls/min: 3 calls per project, 150 at least, so more than a minute's worth
    fleet_defaults_requests: int = 15_000
    fleet_defaults_projects: int = 50
    throttled_requests: int = 3_000
    throttled_projects: int = 150  # 150 calls at least: more than the 100 a minute allowed, so 429s happen
    light_rate: float = 1.0
    light_seconds: float = 30.0
    light_projects: int = 5
    # urgent requests past a backlog of bulk ones (bench/urgent.py)
    urgent_backlog: int = 25_000
    urgent_projects: int = 3

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            throughput=5_000,
            memory=20_000,
            steady_seconds=8.0,
            rate_requests=600,
            ratebound_requests=1_200,
            ratebound100_requests=2_000,
            fleet_requests=2_000,
            fleet_defaults_requests=6_000,
            fleet_defaults_projects=30,
            throttled_requests=1_000,
            light_seconds=10.0,
            urgent_backlog=6_000,
        )


@dataclass
class Context:
    """What every scenario shares: the broker, the simulator, where logs go, the worker's base settings."""

    amqp_url: str
    broker: Broker
    sim: SimProcess
    log_dir: Path
    sizes: Sizes
    worker_settings: dict[str, str]
    #: settings a bulk backlog is run with (throughput, memory): a linger long enough for batches to fill
    backlog_settings: dict[str, str] = field(default_factory=dict)
    worker_settings_seen: dict[str, str] = field(default_factory=dict)
    #: the fleet scenario: the Redis database its shared-budget mode may flush, and which modes to run
    redis_url: str = "redis://127.0.0.1:6379/13"
    fleet_modes: tuple[str, ...] = ("redis", "shares")
    #: overrides the timeout of every rate-bound run (ratebound, ratebound100, throttled, fleet)
    bound_timeout_s: float | None = None

    def cpu_watch(self) -> CpuWatch:
        return CpuWatch({"broker": find_pid("beam.smp"), "simulator": self.sim.proc.pid})

    def spawn(
        self,
        system: str,
        queues: Queues,
        log_name: str,
        overrides: Mapping[str, str],
        *,
        sim: SimProcess | None = None,
        base: Mapping[str, str] | None = None,
    ) -> Measured:
        """Start ``system`` on ``queues`` against ``sim`` (default: the unlimited one), with ``base`` settings
        (default: the bench's worker settings; ``{}`` for the worker's own defaults) plus ``overrides``."""
        log = self.log_dir / f"{log_name}.log"
        sim = sim or self.sim
        # job tracking off unless a scenario asks for it: its queues and polls belong to the tracking scenario
        settings = {"track_jobs": "false", **(self.worker_settings if base is None else base), **overrides}
        if system == "nostore":
            settings["idempotency_store"] = "off"
        elif system == "notrack":
            settings["track_jobs"] = "false"
        elif system == "worker":
            # a fresh store per run (under the bench's log directory), never the user's ~/.local/state
            settings.setdefault("state_dir", str(self.log_dir / "state" / log_name))
        if system in WORKERS:
            env = {
                "amqp_url": self.amqp_url,
                "api_url": sim.url,
                "auth_token": sim.token,
                "log_level": "INFO",
                **queues.settings(),
                **settings,
            }
            return Measured(system, ["-m", "snapworker", "run"], log, env=snapworker_env(env))
        argv = ["-m", "bench.baselines", system, "--amqp-url", self.amqp_url, "--prefetch", settings["prefetch"]]
        argv += ["--request-queue", queues.request, "--result-queue", queues.result, "--error-queue", queues.error]
        if system == "perapi":
            argv += ["--api-url", self.sim.url, "--token", self.sim.token, "--concurrency", settings["max_concurrency"]]
        return Measured(system, argv, log, env=snapworker_env({}))


def backlog(n: int, projects: int, tag: str) -> Iterator[Message]:
    """``n`` single-desktop requests, round-robin over ``projects`` projects, every desktop distinct."""
    for i in range(n):
        body = f'{{"project_id":"p{i % projects:03d}-{tag}","desktop_ids":["d-{tag}-{i:07d}"]}}'
        yield body.encode(), str(i)


def backlog_minimum_calls(n: int, projects: int, max_batch: int = 100) -> int:
    return minimum_calls(((i % projects, str(i)) for i in range(n)), max_batch)


def rotated(items: tuple[T, ...], by: int) -> list[T]:
    k = by % len(items)
    return [*items[k:], *items[:k]]


def throughput_order(systems: tuple[str, ...], run_index: int) -> list[str]:
    """The run's order: rotated per run, with worker and nostore back to back, which of them first alternating."""
    pair = [s for s in systems if s in WORKERS]
    if run_index % 2:
        pair.reverse()
    units = ([tuple(pair)] if pair else []) + [(s,) for s in systems if s not in WORKERS]
    return [s for unit in rotated(tuple(units), run_index) for s in unit]


async def measure_backlog(
    ctx: Context,
    system: str,
    *,
    n: int,
    projects: int,
    log_name: str,
    overrides: Mapping[str, str] | None = None,
    timeout_s: float,
    wait_for_completions: bool = True,
) -> dict[str, Any]:
    """Publish a backlog to fresh queues, run ``system`` on it until every result is in; everything measured.
    For a system in TRACKED, then (outside the timed drain) until every completion is in, unless not
    ``wait_for_completions``: the worker's CPU read then includes all of tracking's work."""
    completed: dict[str, Any] = {}
    overrides = dict(overrides or {})
    queues = Queues.fresh(system)
    tracking = TrackingQueues.of(queues) if system in TRACKED else None
    if tracking is not None:
        overrides |= tracking.settings()
    await ctx.broker.declare(queues)
    try:
        started = time.perf_counter()
        tag = uuid.uuid4().hex[:6]
        await ctx.broker.publish_many(
            queues.request, backlog(n, projects, tag), in_flight=PUBLISH_IN_FLIGHT, timeout_s=max(120.0, n / 200)
        )
        publish_s = time.perf_counter() - started
        quiet_s = await wait_until_quiet(find_pid("beam.smp"))
        await ctx.sim.reset()
        watch = ctx.cpu_watch()
        watch.start()
        proc = ctx.spawn(system, queues, log_name, overrides)
        run = Drive(system=system, expected=n)
        try:
            run = await drive(proc, ctx.broker, queues, n, timeout_s, watch)
            if run.outcome == "ok":
                run.request_queue_after = await verify_drained(queues.request)
            if run.outcome == "ok" and tracking is not None and wait_for_completions:
                completed = await tracking.wait_for_completions(ctx.broker, proc, n, timeout_s)
        finally:
            run.exit_code = await proc.stop()
        log = proc.log_text()
        run.totals = parse_totals(log, "worker totals " if system in WORKERS else "baseline totals ")
        if system == "worker" and not ctx.worker_settings_seen:
            ctx.worker_settings_seen = parse_settings_line(log)
        sim = await ctx.sim.stats()
        run.sim = {k: sim.get(k) for k in ("calls_total", "calls_by_status", "max_calls_in_one_second", "batch_sizes")}
    finally:
        await ctx.broker.delete(queues)
        if tracking is not None:
            await tracking.delete(ctx.broker)
    max_batch = int(overrides.get("max_batch", ctx.worker_settings.get("max_batch", "100")))
    data = run.to_json()
    data["publish_s"] = round(publish_s, 2)
    data["broker_quiet_wait_s"] = quiet_s
    data["settings_overrides"] = overrides
    data["calls_minimum"] = backlog_minimum_calls(n, projects, max_batch)
    calls = int(run.sim.get("calls_total") or 0) if run.sim else 0
    data["economy"] = data["calls_minimum"] / calls if calls else None
    data["tracked"] = tracking is not None
    data |= completed
    return data


async def throughput(ctx: Context, run_index: int, systems: tuple[str, ...]) -> dict[str, Any]:
    """One run: each system on its own identical backlog, back to back (see :func:`throughput_order`); then
    STORE_PAIRS more (worker, nostore) pairs, each back to back, for the store's price."""
    n, projects = ctx.sizes.throughput, ctx.sizes.projects
    out: dict[str, Any] = {"order": throughput_order(systems, run_index)}

    async def measure(system: str, log_name: str) -> dict[str, Any]:
        return await measure_backlog(
            ctx,
            system,
            n=n,
            projects=projects,
            log_name=log_name,
            timeout_s=60 + n / 100,
            overrides=ctx.backlog_settings if system in WORKERS else None,
        )

    for system in out["order"]:
        out[system] = await measure(system, f"throughput-r{run_index}-{system}")
    out["store_pairs"] = []
    if set(systems) >= WORKERS:
        for k in range(STORE_PAIRS):
            first_on = (run_index + k + 1) % 2 == 0
            pair: dict[str, Any] = {}
            for system in ("worker", "nostore") if first_on else ("nostore", "worker"):
                pair[system] = await measure(system, f"throughput-r{run_index}-pair{k}-{system}")
            out["store_pairs"].append(pair)
    return out


async def memory(ctx: Context, run_index: int) -> dict[str, Any]:
    """The worker drains a large backlog; VmRSS sampled about 10 times a second, VmHWM read at the end."""
    n = ctx.sizes.memory
    data = await measure_backlog(
        ctx,
        "worker",
        n=n,
        projects=ctx.sizes.projects,
        log_name=f"memory-r{run_index}-worker",
        timeout_s=120 + n / 200,
        overrides=ctx.backlog_settings,
    )
    data["settings_prefetch"] = ctx.worker_settings["prefetch"]
    return data


async def rate(ctx: Context, run_index: int) -> dict[str, Any]:
    """RATE_LIMIT=10, RATE_BURST=5, MAX_BATCH=10: the simulator's busiest second against 15 calls."""
    overrides = {"rate_limit": "10", "rate_burst": "5", "max_batch": "10"}
    n = ctx.sizes.rate_requests
    data = await measure_backlog(
        ctx,
        "worker",
        n=n,
        projects=ctx.sizes.rate_projects,
        log_name=f"rate-r{run_index}-worker",
        overrides=overrides,
        timeout_s=60 + n / 50,
    )
    sim = data.get("sim") or {}
    data["max_calls_in_one_second"] = sim.get("max_calls_in_one_second")
    data["allowed_in_one_second"] = 10 + 5
    seconds = data.get("seconds")
    data["calls_per_s"] = sim.get("calls_total", 0) / seconds if seconds else None
    return data
