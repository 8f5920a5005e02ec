"""``python -m bench``: measure snapworker against its baselines; print one table, write every raw run as JSON.

Documented entry point: ``bash bench/run [--runs 3] [--quick] [--only throughput,latency,...] [--json PATH]``.
See bench/README.md for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import fleet, limited, ratebound, recovery, scenarios, steady, tracking, urgent
from bench.broker import Broker, check_loopback
from bench.infra import SimProcess
from bench.procs import kill_leftovers, machine_info
from bench.report import format_table
from bench.scenarios import SYSTEMS, Context, Sizes
from bench.summary import summarize

#: The worker's own cost against an unlimited API (bench settings, RATE_LIMIT 1000).
UNLIMITED_FIGURES = ("throughput", "economy", "latency", "memory", "rate", "cpu")
#: The rate-bound regime: worker defaults against a simulator enforcing the real limit (bench/README.md).
BOUND_FIGURES = (
    "ratebound",
    "ratebound100",
    "throttled",
    "fleet",
    "latency_defaults",
    "tracking",
    "recovery",
    "urgent",
)
FIGURES = UNLIMITED_FIGURES + BOUND_FIGURES
Scenario = Callable[[Context, int], Awaitable[dict[str, Any]]]
BOUND_SCENARIOS: dict[str, Scenario] = {
    "ratebound": ratebound.ratebound,
    "ratebound100": ratebound.ratebound100,
    "throttled": ratebound.throttled,
    "fleet": fleet.fleet,
    "latency_defaults": steady.latency_defaults,
    "tracking": tracking.tracking,
    "recovery": recovery.recovery,
    "urgent": urgent.urgent,
}


def plan(figures: set[str]) -> dict[str, Scenario]:
    """Which scenarios measure the wanted figures, in the order each run performs them."""
    chosen: dict[str, Scenario] = {}
    if figures & {"throughput", "cpu", "economy"}:
        systems = SYSTEMS if figures & {"throughput", "cpu"} else ("worker",)

        async def throughput(ctx: Context, run: int) -> dict[str, Any]:
            return await scenarios.throughput(ctx, run, systems)

        chosen["throughput"] = throughput
    if figures & {"latency", "economy"}:
        chosen["steady"] = steady.steady
    if "rate" in figures:
        chosen["rate"] = scenarios.rate
    if "memory" in figures:
        chosen["memory"] = scenarios.memory
    for name, scenario in BOUND_SCENARIOS.items():
        if name in figures:
            chosen[name] = scenario
    return chosen


def _brief(name: str, data: dict[str, Any]) -> str:
    """One progress line per scenario run."""
    if "error" in data:
        return f"{name}: ERROR {data['error']}"
    if name == "throughput":
        parts = []
        for system in data["order"]:
            d = data[system]
            rate = f"{d['requests_per_s']:,.0f} req/s" if d.get("requests_per_s") else d.get("outcome")
            other = (d.get("cpu_elsewhere") or {}).get("others_cpu_s")
            parts.append(
                f"{system} {rate} (cpu {d.get('cpu_s') or 0:.1f} s, calls {(d.get('sim') or {}).get('calls_total')}, "
                f"other processes {other} cpu-s)"
            )
        for k, pair in enumerate(data.get("store_pairs", ())):
            shown = [f"{system} {pair[system].get('requests_per_s') or 0:,.0f}" for system in pair]
            parts.append(f"pair {k + 1}: " + ", ".join(shown) + " req/s")
        return "throughput: " + "; ".join(parts)
    if name == "steady":
        lat = data["latency_ms"]
        return (
            f"steady: p50 {lat['p50'] or 0:.0f} ms, p99 {lat['p99'] or 0:.0f} ms, calls {data['calls_total']} "
            f"(min {data['calls_minimum_with_linger']}), flushes {data['batches_by_reason']}"
        )
    if name == "rate":
        return f"rate: max {data.get('max_calls_in_one_second')} calls in 1 s, {data.get('outcome')}"
    if name in ("ratebound", "ratebound100", "throttled"):
        return limited.brief(name, data)
    if name == "fleet":
        return "; ".join(
            f"{mode} {data[mode]['skipped']}" if "skipped" in data[mode] else limited.brief(f"fleet {mode}", data[mode])
            for mode in data["modes"]
        )
    if name == "tracking":
        return tracking.brief(data)
    if name == "recovery":
        return recovery.brief(data)
    if name == "urgent":
        return urgent.brief(data)
    if name == "latency_defaults":
        lat = data["latency_ms"]
        p50, p99 = lat["p50"] or 0, lat["p99"] or 0
        return f"latency_defaults: p50 {p50:.0f} ms, p99 {p99:.0f} ms, calls {data['calls_total']}"
    return f"memory: VmHWM {data.get('vm_hwm_mb') or 0:.1f} MB, {data.get('requests_per_s') or 0:,.0f} req/s"


async def attempt(ctx: Context, name: str, scenario: Scenario, index: int, tries: int = 2) -> dict[str, Any]:
    """Run one scenario; if it fails (typically: the shared broker was restarted under it), once more."""
    errors: list[str] = []
    for _ in range(tries):
        try:
            data = await scenario(ctx, index)
        except Exception as exc:  # one failed scenario must not lose the others
            traceback.print_exc()
            errors.append(repr(exc))
            print(f"{name}: failed ({exc!r}); reconnecting to the broker", file=sys.stderr, flush=True)
            ctx.broker = await Broker.reopen(ctx.broker)
            continue
        if errors:
            data["failed_attempts"] = errors
        return data
    return {"error": errors[-1], "failed_attempts": errors}


async def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    amqp_url: str = args.amqp_url
    check_loopback(amqp_url)
    figures = set(args.only.split(",")) if args.only else set(FIGURES)
    unknown = figures - set(FIGURES)
    if unknown:
        raise SystemExit(f"bench: unknown figure(s) {sorted(unknown)}; choose from {', '.join(FIGURES)}")
    sizes = Sizes.quick() if args.quick else Sizes()
    runs: int = args.runs if args.runs is not None else (1 if args.quick else 3)
    json_path = Path(args.json)
    log_dir = json_path.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    worker_settings = {
        "prefetch": str(args.prefetch),
        "max_concurrency": str(args.concurrency),
        "rate_limit": "1000",
        "rate_burst": "100",
        # job reads too: an API without limits has none on reads either (tracking's looks then take seconds)
        "read_rate_limit": "100",
    }
    # A bulk backlog (a nightly run) wants full batches more than low latency: with 50 projects, a batch fills
    # only after 100 x 50 deliveries, longer than the default 250 ms linger at any intake rate Python reaches.
    backlog_settings = {"linger_ms": str(args.backlog_linger_ms)}
    machine = machine_info()
    chosen = plan(figures)
    print(f"machine: {json.dumps(machine)}", flush=True)
    print(f"sizes: {json.dumps(sizes.__dict__)}; runs: {runs} (memory: {min(runs, args.memory_runs)})", flush=True)
    print(f"scenarios: {', '.join(chosen)}", flush=True)
    print(f"unlimited-API worker settings (SNAPWORKER_*, the rest default): {json.dumps(worker_settings)}", flush=True)
    print(f"backlog scenarios (throughput, memory) also: {json.dumps(backlog_settings)}", flush=True)
    if set(chosen) & set(BOUND_FIGURES):
        print(
            f"rate-bound scenarios: worker defaults (bar each scenario's own overrides), a simulator each run with "
            f"--rate-per-minute {limited.API_PER_MINUTE} (fleet: {fleet.FLEET_PER_MINUTE})",
            flush=True,
        )
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    broker = await Broker.open(amqp_url)
    sim = await SimProcess.start(log_dir / "simulator.log", token=f"bench-token-{uuid.uuid4().hex}")
    check_loopback(sim.url)
    ctx = Context(amqp_url, broker, sim, log_dir, sizes, worker_settings, backlog_settings)
    ctx.redis_url, ctx.bound_timeout_s = args.redis_url, args.bound_timeout_s
    ctx.fleet_modes = tuple(m for m in args.fleet_modes.split(",") if m)
    try:
        for index in range(runs):
            for name, scenario in chosen.items():
                if name == "memory" and index >= args.memory_runs:
                    continue
                begun = time.perf_counter()
                data = await attempt(ctx, name, scenario, index)
                data["wall_s"] = round(time.perf_counter() - begun, 1)
                raw[name].append(data)
                print(
                    f"[run {index + 1}/{runs}, {time.perf_counter() - started:6.0f} s] {_brief(name, data)}", flush=True
                )
        sim_cpu = sim.proc.cpu_s()
    finally:
        await sim.stop()
        for queues in list(ctx.broker.undeleted):
            with contextlib.suppress(Exception):
                await ctx.broker.delete(queues)
        with contextlib.suppress(Exception):
            await ctx.broker.close()
        kill_leftovers()
    good = {name: [r for r in values if "error" not in r] for name, values in raw.items()}
    rows, medians = summarize(good)
    failed_scenarios = [name for name, values in raw.items() if len(good[name]) < len(values)]
    if not json_path.is_absolute():
        json_path = Path.cwd() / json_path
    machine["loadavg_at_end"] = list(os.getloadavg())
    report = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "argv": sys.argv[1:],
        "runs": runs,
        "quick": args.quick,
        "sizes": sizes.__dict__,
        "machine": machine,
        "worker_settings_overrides": worker_settings,
        "backlog_settings_overrides": backlog_settings,
        "worker_settings_effective": ctx.worker_settings_seen,
        "simulator_cpu_s": sim_cpu,
        "scenarios_with_errors": failed_scenarios,
        "table": [row.to_json() for row in rows],
        "medians": medians,
        "raw": raw,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print()
    print(format_table(rows))
    print()
    print(f"{runs} run(s), medians (min–max); {report['duration_s']:.0f} s; raw runs and machine info: {json_path}")
    if args.quick:
        print("--quick: sizes below the issue's (see 'sizes' above); the verdicts are indicative only")
    if failed_scenarios:
        print(f"scenarios with errors (see the logs in {log_dir}): {', '.join(failed_scenarios)}")
    failed = failed_scenarios or any(row.verdict == "FAIL" for row in rows)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=None, help="runs per scenario (default 3, --quick 1)")
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 run: a smoke check in minutes")
    parser.add_argument(
        "--memory-runs", type=int, default=1, help="runs of the long memory scenario (default 1; at most --runs)"
    )
    parser.add_argument("--only", default="", help=f"comma-separated figures: {','.join(FIGURES)} (default all)")
    parser.add_argument("--json", default="bench/results/latest.json", help="where to write the JSON report")
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("SNAPWORKER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        help="local RabbitMQ (loopback only; default $SNAPWORKER_AMQP_URL or 127.0.0.1)",
    )
    parser.add_argument("--prefetch", type=int, default=10_000, help="PREFETCH of the worker and the baselines")
    parser.add_argument(
        "--backlog-linger-ms", type=int, default=10_000, help="LINGER_MS of the worker in the backlog scenarios"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="MAX_CONCURRENCY / baseline (b) connections")
    parser.add_argument(
        "--fleet-modes",
        default=",".join(fleet.FLEET_MODES),
        help="fleet scenario: redis (shared budget in Redis), shares (per-process shares), or both (default)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/13",
        help="fleet redis mode: the database the workers share; FLUSHED before each run (loopback only)",
    )
    parser.add_argument(
        "--bound-timeout-s",
        type=float,
        default=None,
        help="timeout of every rate-bound run (default: 180 s, ratebound100 2 x its ideal drain + 30 s)",
    )
    args = parser.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    modes = [m for m in args.fleet_modes.split(",") if m]
    if not modes or set(modes) - set(fleet.FLEET_MODES):
        parser.error(f"--fleet-modes: choose among {','.join(fleet.FLEET_MODES)}")
    check_loopback(args.redis_url)
    if args.bound_timeout_s is not None and not 10 <= args.bound_timeout_s <= 3600:
        parser.error("--bound-timeout-s must be between 10 and 3600")
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        kill_leftovers()
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
