"""From raw runs to medians, the table rows and their verdicts against the issue's targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.report import P99_MARGIN_MS, Row, ratio, spread, verdict
from bench.summary_bound import bound_rows

__all__ = ["summarize"]

Runs = Sequence[dict[str, Any]]

#: issue 23: the worker as users run it (idempotency store and job tracking on) against the no-API loop
THROUGHPUT_VS_NOAPI = 1.5
THROUGHPUT_VS_PERAPI = 3.0
#: issue 12: throughput with the idempotency store on stays within 15% of throughput with it off
STORE_ON_VS_OFF = 0.85
ECONOMY_BACKLOG = 0.98
PEAK_RSS_MB = 150.0


def _get(run: dict[str, Any], *path: str) -> Any:
    value: Any = run
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ok(run: dict[str, Any]) -> bool:
    after = run.get("request_queue_after") or {}
    return run.get("outcome") == "ok" and after.get("ready") == 0 and after.get("unacked") == 0


def _throughput(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    systems = [s for s in ("worker", "nostore", "notrack", "noapi", "perapi") if any(s in r for r in runs)]
    rate = {s: spread(_get(r, s, "requests_per_s") if _ok(r.get(s, {})) else None for r in runs) for s in systems}
    n = next((r[s]["expected"] for r in runs for s in systems if s in r), 0)
    medians["throughput_requests_per_s"] = {s: v.to_json() for s, v in rate.items()}
    for base, label, target in (
        ("noapi", "(a) no-API loop", THROUGHPUT_VS_NOAPI),
        ("perapi", "(b) per-message API", THROUGHPUT_VS_PERAPI),
    ):
        if base not in rate or "worker" not in rate:
            continue
        ratios = spread(ratio(_get(r, "worker", "requests_per_s"), _get(r, base, "requests_per_s")) for r in runs)
        medians[f"throughput_ratio_vs_{base}"] = ratios.to_json()
        rows.append(
            Row(
                f"throughput, {n:,} req backlog (req/s)",
                rate["worker"].show(),
                f"{label}: {rate[base].show()}",
                ratios.show("{:.2f}x"),
                f">= {target:.1f}x",
                verdict(ratios.median >= target if ratios.median is not None else None),
            )
        )
    if "worker" in rate and "nostore" in rate:
        rows += _store_cost(runs, medians)
    if "worker" in rate:
        steady = {s: spread(_get(r, s, "requests_per_s_after_consuming") for r in runs) for s in systems}
        medians["throughput_after_consuming_requests_per_s"] = {s: v.to_json() for s, v in steady.items()}
        base_text = " / ".join(f"{s}: {steady[s].show()}" for s in systems if s != "worker")
        rows.append(Row("  same, from first consume (req/s)", steady["worker"].show(), base_text, "", "", "info"))
        drain = {s: spread(_get(r, s, "requests_per_s_after_first_result") for r in runs) for s in systems}
        medians["throughput_after_first_result_requests_per_s"] = {s: v.to_json() for s, v in drain.items()}
        base_text = " / ".join(f"{s}: {drain[s].show()}" for s in systems if s != "worker")
        rows.append(Row("  same, from first result (req/s)", drain["worker"].show(), base_text, "", "", "info"))
        cpu = {s: spread(_get(r, s, "cpu_s_per_1k_after_start") for r in runs) for s in systems}
        gross = {s: spread(_get(r, s, "cpu_s_per_1k") for r in runs) for s in systems}
        medians["cpu_s_per_1k_requests_with_start_up"] = {s: v.to_json() for s, v in gross.items()}
        medians["cpu_s_per_1k_requests"] = {s: v.to_json() for s, v in cpu.items()}
        base_text = " / ".join(f"{s}: {cpu[s].show('{:.3f}')}" for s in systems if s != "worker")
        cpu_ratios = " / ".join(
            f"{ratio(cpu['worker'].median, cpu[s].median) or 0:.2f}x" for s in systems if s != "worker"
        )
        rows.append(
            Row(
                "CPU user+sys s per 1k req (after start-up)",
                cpu["worker"].show("{:.3f}"),
                base_text,
                cpu_ratios,
                "",
                "info",
            )
        )
        rows += _cpu_everything(runs, medians, systems)
        noise = spread(_get(r, s, "cpu_elsewhere", "others_cores") for r in runs for s in systems)
        medians["other_processes_cores_during_throughput"] = noise.to_json()
        rows.append(Row("  CPU of other processes meanwhile (cores)", noise.show("{:.2f}"), "", "", "", "info"))
        economy = spread(_get(r, "worker", "economy") for r in runs)
        medians["economy_backlog"] = economy.to_json()
        per_api = spread(_get(r, "perapi", "economy") for r in runs)
        calls = spread(_get(r, "worker", "sim", "calls_total") for r in runs)
        minimum = next((_get(r, "worker", "calls_minimum") for r in runs if "worker" in r), None)
        rows.append(
            Row(
                "API economy, backlog (min calls / calls)",
                f"{economy.show('{:.3f}')} ({calls.show()} calls, min {minimum})",
                f"(b): {per_api.show('{:.3f}')}" if "perapi" in rate else "",
                "",
                f">= {ECONOMY_BACKLOG}",
                verdict(economy.median >= ECONOMY_BACKLOG if economy.median is not None else None),
            )
        )
    return rows


def _cpu_everything(runs: Runs, medians: dict[str, Any], systems: list[str]) -> list[Row]:
    """CPU per 1k requests of the tracked workers until their last completion (tracking's looks come after the
    drain, so the drain's own figure leaves them out), against the others' CPU at the end of their drain."""
    tracked = [s for s in systems if any(_get(r, s, "tracked") for r in runs)]
    if not tracked:
        return []
    cpu = {s: spread(_get(r, s, "cpu_s_per_1k_all") for r in runs) for s in tracked}
    cpu |= {s: spread(_get(r, s, "cpu_s_per_1k") for r in runs) for s in systems if s not in tracked}
    medians["cpu_s_per_1k_requests_everything"] = {s: v.to_json() for s, v in cpu.items()}
    done = spread(_get(r, "worker", "all_completed_s") for r in runs)
    medians["all_completed_s"] = done.to_json()
    others = " / ".join(f"{s}: {cpu[s].show('{:.3f}')}" for s in systems if s != "worker")
    noapi = ratio(cpu["noapi"].median, cpu["worker"].median) if "noapi" in cpu and "worker" in cpu else None
    return [
        Row(
            "CPU s per 1k req, everything (to the last completion; start-up included)",
            f"{cpu['worker'].show('{:.3f}')} (last completion at {done.show('{:.1f}')} s)" if "worker" in cpu else "",
            others,
            f"(a) uses {noapi:.2f}x" if noapi is not None else "",
            "",
            "info",
        )
    ]


def _store_cost(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    """The idempotency store's price, per (worker, nostore) pair: each run's own pair and its extra
    ``store_pairs``. Throughput on/off and the difference of CPU per request (after start-up, in microseconds)
    within each pair, then the median over all pairs."""
    pairs = [
        p
        for r in runs
        for p in (r, *r.get("store_pairs", ()))
        if _ok(p.get("worker", {})) and _ok(p.get("nostore", {}))
    ]
    ratios = spread(ratio(_get(p, "worker", "requests_per_s"), _get(p, "nostore", "requests_per_s")) for p in pairs)
    medians["throughput_ratio_store_on_vs_off"] = ratios.to_json()
    extra = []
    for p in pairs:
        on, off = _get(p, "worker", "cpu_s_per_1k_after_start"), _get(p, "nostore", "cpu_s_per_1k_after_start")
        extra.append(None if on is None or off is None else (on - off) * 1000)  # s per 1k -> us per request
    cost = spread(extra)
    medians["store_cpu_us_per_request"] = cost.to_json()
    # where it goes: the event loop's thread, or the store's own (the worker's other threads, less the
    # store-off worker's), per request including start-up
    split: dict[str, Any] = {}
    for thread in ("main", "others"):
        split[thread] = spread(_thread_extra_us(p, thread) for p in pairs)
        name = "main_thread" if thread == "main" else "other_threads"
        medians[f"store_cpu_us_per_request_{name}"] = split[thread].to_json()
    on = spread(_get(p, "worker", "requests_per_s") for p in pairs)
    off = spread(_get(p, "nostore", "requests_per_s") for p in pairs)
    return [
        Row(
            f"  idempotency store on vs off (req/s), {len(pairs)} pairs",
            on.show(),
            f"IDEMPOTENCY_STORE=off: {off.show()}",
            ratios.show("{:.2f}x"),
            f">= {STORE_ON_VS_OFF:.2f}x",
            verdict(ratios.median >= STORE_ON_VS_OFF if ratios.median is not None else None),
        ),
        Row("  store's CPU per request (us, on - off)", cost.show("{:.0f}"), "", "", "", "info"),
        Row(
            "    of it: event loop's thread / other threads (us)",
            f"{split['main'].show('{:.0f}')} / {split['others'].show('{:.0f}')}",
            "",
            "",
            "",
            "info",
        ),
    ]


def _thread_extra_us(pair: dict[str, Any], thread: str) -> float | None:
    """CPU of ``thread`` ("main" or "others") per request with the store on minus off, in microseconds."""
    on, off = _get(pair, "worker", "thread_cpu_s", thread), _get(pair, "nostore", "thread_cpu_s", thread)
    expected = _get(pair, "worker", "expected")
    if on is None or off is None or not expected:
        return None
    return float((on - off) / expected * 1e6)


def _steady(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    linger = float(runs[0].get("linger_ms") or 250)
    p50 = spread(_get(r, "latency_ms", "p50") for r in runs)
    p99 = spread(_get(r, "latency_ms", "p99") for r in runs)
    worst = spread(_get(r, "latency_ms", "max") for r in runs)
    medians["latency_ms"] = {"p50": p50.to_json(), "p99": p99.to_json(), "max": worst.to_json()}
    complete = all(r.get("results") == r.get("requests") for r in runs)
    load = f"{runs[0]['rate_per_s']:.0f} req/s, {runs[0]['projects']} projects"
    rows = [
        Row(f"latency p50, {load} (ms)", p50.show(), f"LINGER_MS {linger:.0f}", "", "", "info"),
        Row(
            f"latency p99, {load} (ms)",
            p99.show() + f" (max {worst.show()})",
            f"LINGER_MS {linger:.0f}",
            "",
            f"<= {linger + P99_MARGIN_MS:.0f}",
            verdict(complete and p99.median is not None and p99.median <= linger + P99_MARGIN_MS),
        ),
    ]
    economy = spread(r.get("economy") for r in runs)
    calls = spread(r.get("calls_total") for r in runs)
    minimum = spread(r.get("calls_minimum_with_linger") for r in runs)
    reasons = [r.get("batches_by_reason") or {} for r in runs]
    full = sum(int(x.get("full", 0)) for x in reasons)
    linger_n = sum(int(x.get("linger", 0)) for x in reasons)
    other = sum(int(v) for x in reasons for k, v in x.items() if k not in ("full", "linger"))
    medians["economy_trickle"] = {
        "economy": economy.to_json(),
        "calls": calls.to_json(),
        "calls_minimum_with_linger": minimum.to_json(),
        "batches_by_reason_all_runs": {"full": full, "linger": linger_n, "other": other},
    }
    ok = complete and all(reasons) and full == 0 and other == 0
    rows.append(
        Row(
            "API economy, trickle (flushes full/linger/other)",
            f"{full}/{linger_n}/{other}; {calls.show()} calls vs min {minimum.show()} per linger window",
            "",
            economy.show("{:.2f}"),
            "full = 0, all by linger",
            verdict(ok),
        )
    )
    return rows


def _memory(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    hwm = spread(r.get("vm_hwm_mb") for r in runs)
    medians["peak_rss_mb"] = hwm.to_json()
    n = runs[0]["expected"]
    ok = all(_ok(r) for r in runs) and hwm.high is not None and hwm.high <= PEAK_RSS_MB
    return [
        Row(
            f"peak RSS, {n:,} req backlog (MB)",
            hwm.show("{:.1f}"),
            f"PREFETCH {runs[0].get('settings_prefetch', '')}".strip(),
            "",
            f"<= {PEAK_RSS_MB:.0f} (every run)",
            verdict(ok),
        )
    ]


def _rate(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    peak = spread(r.get("max_calls_in_one_second") for r in runs)
    achieved = spread(r.get("calls_per_s") for r in runs)
    allowed = int(runs[0].get("allowed_in_one_second") or 15)
    medians["rate"] = {"max_calls_in_one_second": peak.to_json(), "calls_per_s": achieved.to_json()}
    ok = all(_ok(r) for r in runs) and peak.high is not None and peak.high <= allowed
    return [
        Row(
            "rate: most calls in any 1 s (10/s, burst 5)",
            f"{peak.show()} (avg {achieved.show('{:.1f}')}/s)",
            f"RATE_LIMIT+BURST {allowed}",
            "",
            f"<= {allowed} (every run)",
            verdict(ok),
        )
    ]


UNLIMITED = "**unlimited API: the worker's own cost (bench settings, RATE_LIMIT 1000 unless said)**"
RATE_BOUND = "**rate-bound: the API's real limit (100 calls/min per credential), worker defaults**"


def summarize(scenarios: Mapping[str, Runs]) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    medians: dict[str, Any] = {}
    if any(scenarios.get(name) for name in ("throughput", "steady", "memory", "rate")):
        rows.append(Row(UNLIMITED, "", "", "", "", ""))
    if scenarios.get("throughput"):
        rows += _throughput(scenarios["throughput"], medians)
    if scenarios.get("steady"):
        rows += _steady(scenarios["steady"], medians)
    if scenarios.get("memory"):
        rows += _memory(scenarios["memory"], medians)
    if scenarios.get("rate"):
        rows += _rate(scenarios["rate"], medians)
    bound = bound_rows(scenarios, medians)
    if bound:
        rows += [Row(RATE_BOUND, "", "", "", "", ""), *bound]
    return rows, medians
