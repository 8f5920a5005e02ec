"""Table rows and verdicts of the rate-bound scenarios: worker defaults against the API's real limit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.limited import answered_once, lost
from bench.report import P99_MARGIN_MS, Row, spread, verdict
from bench.urgent import urgent_rows

__all__ = [
    "ECONOMY_FLEET",
    "ECONOMY_RATEBOUND",
    "ECONOMY_RATEBOUND100",
    "bound_rows",
]

Runs = Sequence[dict[str, Any]]

ECONOMY_RATEBOUND = 0.97
ECONOMY_RATEBOUND100 = 0.9
ECONOMY_FLEET = 0.95
DRAIN_VS_IDEAL = 1.1
THROTTLED_429_SHARE = 0.10
FLEET_429_SHARE = 0.01


def _unfinished(runs: Runs) -> str:
    """' (timeout: 1,234 of 5,000 answered in 180 s)' for runs that did not finish, else ''."""
    notes = [
        f"{r.get('outcome')}: {r.get('results_in_queues', 0):,} of {r.get('requests', 0):,} in {r.get('elapsed_s')} s"
        for r in runs
        if r.get("outcome") != "ok"
    ]
    return f" ({'; '.join(notes)})" if notes else ""


def _economy_row(label: str, runs: Runs, target: float | None, medians: dict[str, Any], key: str) -> Row:
    economy = spread(r.get("economy") for r in runs)
    calls = spread(r.get("calls_total") for r in runs)
    minimum = runs[0].get("calls_minimum")
    medians[key] = {"economy": economy.to_json(), "calls": calls.to_json(), "calls_minimum": minimum}
    per_call = spread(r.get("desktops_per_call") for r in runs)
    medians[key]["desktops_per_call"] = per_call.to_json()
    finished = all(r.get("outcome") == "ok" for r in runs)
    shown = f"{economy.show('{:.3f}')} ({calls.show()} calls, min {minimum}; {per_call.show('{:.1f}')} desktops/call"
    shown += f", best {runs[0].get('desktops_per_call_best') or 0:.1f})"
    if not finished:
        shown += f", projected from desktops/call{_unfinished(runs)}"
    if target is None:
        return Row(label, shown, "", "", "", "info")
    ok = finished and economy.median is not None and economy.median >= target
    return Row(label, shown, "", "", f">= {target}", verdict(ok if economy.median is not None else None))


def _drain_row(runs: Runs, medians: dict[str, Any], key: str, target: float | None) -> Row:
    drain = spread(r.get("seconds") for r in runs)
    ratios = spread(r.get("drain_vs_ideal") for r in runs)
    ideal = runs[0].get("ideal_drain_s") or 0.0
    rate, burst = runs[0].get("ideal_rate_limit"), runs[0].get("ideal_rate_burst")
    medians[key] = {"seconds": drain.to_json(), "vs_ideal": ratios.to_json(), "ideal_s": ideal}
    finished = all(r.get("outcome") == "ok" for r in runs)
    ok = finished and ratios.median is not None and target is not None and ratios.median <= target
    return Row(
        "  drain, first spawn -> all results (s)",
        drain.show("{:.1f}") if finished else f"not finished{_unfinished(runs)}",
        f"ideal {ideal:.1f} = (min - {burst:g}) / {rate:g}/s",
        ratios.show("{:.2f}x"),
        f"<= {target}x ideal" if target is not None else "",
        verdict(ok) if target is not None else "info",
    )


def _outcome_row(runs: Runs, medians: dict[str, Any], key: str, *, failed_target: bool = False) -> Row:
    """429s, failed requests, and whether every request was answered exactly once (the request queue empty).

    PASS when every run was; FAIL when a request was lost (neither answered nor back in the queue), answered
    twice, or (with ``failed_target``) failed; n/a when runs merely did not finish (their rest was requeued)."""
    throttled = spread(r.get("calls_429") for r in runs)
    failed = spread(r.get("requests_failed") for r in runs)
    lost_n = sum(int(r.get("lost") or 0) for r in runs)
    duplicated = sum(int(r.get("duplicated") or 0) + int(r.get("unknown") or 0) for r in runs)
    missing = sum(int(r.get("missing") or 0) for r in runs)
    left = sum(int(r.get("request_queue_ready_after_stop") or 0) for r in runs)
    medians[key] = {"calls_429": throttled.to_json(), "requests_failed": failed.to_json()}
    medians[key] |= {
        "lost_all_runs": lost_n,
        "duplicated_all_runs": duplicated,
        "unanswered_all_runs": missing,
        "requeued_all_runs": left,
    }
    shown = f"{throttled.show()} / {failed.show()} / {lost_n}, {duplicated}"
    if missing or left:
        shown += f" (unanswered {missing:,}, {left:,} back in the queue)"
    if any(lost(r) for r in runs) or (failed_target and (failed.high or 0) > 0):
        result = "FAIL"
    elif all(answered_once(r) for r in runs):
        result = "PASS"
    else:
        result = "n/a"
    return Row(
        "  429s / requests failed / lost, duplicated",
        shown,
        "",
        "",
        ("failed = 0, " if failed_target else "") + "each answered once",
        result,
    )


def _ratebound(name: str, runs: Runs, medians: dict[str, Any], target: float) -> list[Row]:
    first = runs[0]
    label = (
        f"{name}: economy, {first['requests']:,} req, {first['projects']} projects x {first['variants']} settings "
        f"= {first['merge_keys']} keys"
    )
    rows = [
        _economy_row(label, runs, target, medians, f"{name}_economy"),
        _drain_row(runs, medians, f"{name}_drain", DRAIN_VS_IDEAL),
        _outcome_row(runs, medians, f"{name}_outcome"),
    ]
    if name == "ratebound100":
        hwm = spread(r.get("vm_hwm_mb_max") for r in runs)
        medians[f"{name}_peak_rss_mb"] = hwm.to_json()
        rows.append(Row("  peak RSS (VmHWM, MB)", hwm.show("{:.1f}"), "", "", "", "info"))
    return rows


def _throttled(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    first = runs[0]
    share = spread(r.get("calls_429_share") for r in runs)
    medians["throttled_429_share"] = share.to_json()
    settings = (first.get("settings_overrides") or [{}])[0]
    rows = [
        _outcome_row(runs, medians, "throttled_outcome", failed_target=True),
        Row(
            "  429s as a share of calls",
            f"{share.show('{:.1%}')} ({spread(r.get('calls_429') for r in runs).show()} of "
            f"{spread(r.get('calls_total') for r in runs).show()})",
            "",
            "",
            f"<= {THROTTLED_429_SHARE:.0%}",
            verdict(share.high <= THROTTLED_429_SHARE if share.high is not None else None),
        ),
        _economy_row("  economy (min calls / calls)", runs, None, medians, "throttled_economy"),
        _drain_row(runs, medians, "throttled_drain", None),
    ]
    label = (
        f"throttled: RATE_LIMIT {settings.get('rate_limit')} BURST {settings.get('rate_burst')} vs 100/min, "
        f"{first['requests']:,} req over {first['projects']} projects"
    )
    return [Row(label, "", "", "", "", ""), *rows]


def _fleet(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    titles = (
        ("defaults", "one environment, every setting default"),
        ("redis", "shared Redis budget"),
        ("shares", "per-process shares, BURST 1"),
    )
    for mode, title in titles:
        mode_runs = [r[mode] for r in runs if mode in r]
        if not mode_runs:
            continue
        skipped = [r["skipped"] for r in mode_runs if "skipped" in r]
        if skipped:
            rows.append(Row(f"fleet, {title}", f"skipped: {skipped[0]}", "", "", "", "n/a"))
            continue
        first = mode_runs[0]
        label = (
            f"fleet, {title}: economy, {first['workers']} workers, {first['requests']:,} req over "
            f"{first['projects']} projects"
        )
        rows.append(_economy_row(label, mode_runs, ECONOMY_FLEET, medians, f"fleet_{mode}_economy"))
        share = spread(r.get("calls_429_share") for r in mode_runs)
        window = spread(r.get("sim", {}).get("max_calls_in_any_60_s") for r in mode_runs)
        arrivals = spread(r.get("sim", {}).get("max_arrivals_in_any_60_s") for r in mode_runs)
        allowed = int(first.get("allowed_in_any_60_s") or 240)
        medians[f"fleet_{mode}_429_share"] = share.to_json()
        medians[f"fleet_{mode}_max_calls_in_any_60_s"] = window.to_json()
        medians[f"fleet_{mode}_max_arrivals_in_any_60_s"] = arrivals.to_json()
        throttled = spread(r.get("calls_429") for r in mode_runs)
        medians[f"fleet_{mode}_429"] = throttled.to_json()
        # defaults: each worker's own RATE_LIMIT adds up to more than the API allows, so 429s are expected; what
        # they cost is in the economy (a refused call is a call spent)
        share_target = None if mode == "defaults" else FLEET_429_SHARE
        rows += [
            Row(
                "  429s as a share of calls",
                share.show("{:.1%}"),
                f"429 answers: {throttled.show()}",
                "",
                "info" if share_target is None else f"<= {share_target:.0%}",
                "info"
                if share_target is None
                else verdict(share.high <= share_target if share.high is not None else None),
            ),
            Row(
                "  most admitted calls in any 60 s",
                window.show(),
                f"arrivals incl. 429: {arrivals.show()}",
                "",
                f"<= {allowed}",
                verdict(window.high <= allowed if window.high is not None else None),
            ),
            _outcome_row(mode_runs, medians, f"fleet_{mode}_outcome"),
            _drain_row(mode_runs, medians, f"fleet_{mode}_drain", None),
        ]
        keys = [r.get("while_running", {}).get("redis_keys") for r in mode_runs if "while_running" in r]
        if keys:
            rows.append(Row("  keys the workers left in Redis", ", ".join(map(str, keys)), "", "", "", "info"))
    return rows


def _latency_defaults(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    linger = float(runs[0].get("linger_ms") or 250)
    p50 = spread(r.get("latency_ms", {}).get("p50") for r in runs)
    p99 = spread(r.get("latency_ms", {}).get("p99") for r in runs)
    worst = spread(r.get("latency_ms", {}).get("max") for r in runs)
    calls = spread(r.get("calls_total") for r in runs)
    throttled = spread(int((r.get("calls_by_status") or {}).get("429", 0)) for r in runs)
    medians["latency_defaults_ms"] = {"p50": p50.to_json(), "p99": p99.to_json(), "max": worst.to_json()}
    complete = all(r.get("results") == r.get("requests") for r in runs)
    load = f"{runs[0]['rate_per_s']:g} req/s, {runs[0]['projects']} projects, defaults, 100/min API"
    return [
        Row(
            f"latency p50 / p99, {load} (ms)",
            f"{p50.show()} / {p99.show()} (max {worst.show()})",
            f"LINGER_MS {linger:.0f}; {calls.show()} calls, {throttled.show()} 429s",
            "",
            f"p99 <= {linger + P99_MARGIN_MS:.0f}",
            verdict(complete and p99.median is not None and p99.median <= linger + P99_MARGIN_MS),
        )
    ]


def _recovery(runs: Runs, medians: dict[str, Any]) -> list[Row]:
    seconds = spread(r.get("seconds") for r in runs)
    listings = spread(r.get("snapshot_listings") for r in runs)
    calls = spread(r.get("batch_create_calls") for r in runs)
    peak = spread(r.get("max_reads_in_one_second") for r in runs)
    limit = float(runs[0].get("read_rate_limit") or 0)
    accepted = [int((r.get("statuses") or {}).get("accepted", 0)) for r in runs]
    wanted = int(runs[0].get("requests") or 0)
    doubtful = sum(int(r.get("post_maybe_created") or 0) for r in runs)
    repeated = sum(int(r.get("repeated_snapshots") or 0) for r in runs)
    medians["recovery"] = {"seconds": seconds.to_json(), "listings": listings.to_json(), "max_reads": peak.to_json()}
    every = all(n == wanted for n in accepted) and all(r.get("outcome") == "ok" for r in runs)
    return [
        Row(
            f"recovery: {wanted:,} requests in doubt after a crash",
            f"{min(accepted):,} accepted in {seconds.show('{:.1f}')} s; {listings.show()} listings, {calls.show()} "
            f"batch-create calls",
            f"{doubtful} maybe_created, {repeated} repeated snapshots",
            "",
            "all accepted, 0 maybe_created, 0 repeated",
            verdict(every and doubtful == 0 and repeated == 0),
        ),
        Row(
            "recovery: reads in the busiest second, at the API",
            peak.show(),
            f"READ_RATE_LIMIT {limit:g}",
            "",
            f"<= {limit:g}",
            verdict(peak.high is not None and peak.high <= limit),
        ),
    ]


def bound_rows(scenarios: Mapping[str, Runs], medians: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if scenarios.get("ratebound"):
        rows += _ratebound("ratebound", scenarios["ratebound"], medians, ECONOMY_RATEBOUND)
    if scenarios.get("ratebound100"):
        rows += _ratebound("ratebound100", scenarios["ratebound100"], medians, ECONOMY_RATEBOUND100)
    if scenarios.get("throttled"):
        rows += _throttled(scenarios["throttled"], medians)
    if scenarios.get("fleet"):
        rows += _fleet(scenarios["fleet"], medians)
    if scenarios.get("latency_defaults"):
        rows += _latency_defaults(scenarios["latency_defaults"], medians)
    if scenarios.get("recovery"):
        rows += _recovery(scenarios["recovery"], medians)
    if scenarios.get("urgent"):
        rows += urgent_rows(scenarios["urgent"], medians)
    return rows
