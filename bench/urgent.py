"""``urgent``: urgent requests past a large backlog, against the API's real limit, with the worker(s) at defaults.

A backlog of 25,000 single-desktop requests over 3 projects (at least 252 calls: about 165 s at the default
RATE_LIMIT of 1.5 calls/s) is published before the first worker starts, against a simulator of its own allowing
100 calls a minute. 10 s after the (first) worker's spawn, when it holds its full window of backlog and its calls
are going, 6 urgent requests are sent at once with ``SnapshotClient.create_snapshots(..., priority="urgent")``:
3 for a project of the backlog (``p000-<tag>``) and 3 for a project the backlog does not have. Each one's latency
is from the call (publish) to its result received by the client (through its private reply queue, so the result
queues count only the backlog). The run goes on until the whole backlog is answered.

Two modes, each on its own queues and simulator:

- ``single``: one worker, no setting but the queues, the simulator's URL and its token;
- ``fleet``: 3 workers, each also ``REDIS_URL`` (the bench's Redis database, flushed before and after: one shared
  budget, still the default RATE_LIMIT for the whole fleet) and ``PARTITIONS=16``.

Figures: the worst (p100) latency of each group of urgent requests (targets: 3 s alone, 5 s in the fleet), the
economy of backlog and urgent requests together (the fewest calls for all of them over the calls made, 429s
included; target 0.97, as ``ratebound``), the drain time against the ideal, and the batches the workers cut for
urgency.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bench.broker import Queues
from bench.fleet import RedisDb
from bench.limited import API_PER_MINUTE, Workload, answered_once, run_bound
from bench.ratebound import add_drain_figures, timeout_for
from bench.report import Row, minimum_calls_of_requests, spread, verdict
from bench.scenarios import Context
from snapworker.client import SnapshotClient
from snapworker.settings import Settings

__all__ = [
    "GROUPS",
    "TARGET_P100_S",
    "URGENT_MODES",
    "brief",
    "p100_by_group",
    "urgent",
    "urgent_bodies",
    "urgent_rows",
    "urgent_settings",
]

URGENT_MODES = ("single", "fleet")
#: the urgent requests' groups: a project the backlog has, and one it has not
GROUPS = ("backlog project", "new project")
PER_GROUP = 3
#: seconds from the (first) worker's spawn to the urgent requests
URGENT_AFTER_S = 10.0
#: the worst latency allowed to each group of urgent requests, per mode
TARGET_P100_S = {"single": 3.0, "fleet": 5.0}
ECONOMY_TARGET = 0.97
FLEET_WORKERS = 3
FLEET_PARTITIONS = 16
#: an urgent request not answered by then is a failure; the run goes on
URGENT_TIMEOUT_S = 120.0


def urgent_settings(mode: str, redis_url: str) -> list[dict[str, str]]:
    """The SNAPWORKER_* overrides of each worker in ``mode`` (``single``: none at all)."""
    if mode == "single":
        return [{}]
    if mode == "fleet":
        return [{"redis_url": redis_url, "partitions": str(FLEET_PARTITIONS)} for _ in range(FLEET_WORKERS)]
    raise ValueError(f"unknown urgent mode {mode!r}; choose from {', '.join(URGENT_MODES)}")


def urgent_bodies(tag: str) -> list[tuple[str, dict[str, Any]]]:
    """The urgent requests of a run whose backlog's projects are ``p000-<tag>``...: (group, request body)."""
    projects = {GROUPS[0]: f"p000-{tag}", GROUPS[1]: f"pnew-{tag}"}
    return [
        (group, {"project_id": project, "desktop_ids": [f"u-{tag}-{g}-{k}"], "priority": "urgent"})
        for g, (group, project) in enumerate(projects.items())
        for k in range(PER_GROUP)
    ]


def p100_by_group(sent: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The worst latency of each group; None for a group with a request that got no result (or none at all)."""
    out: dict[str, float | None] = {}
    for group in GROUPS:
        mine = [s.get("seconds") for s in sent if s.get("group") == group]
        out[group] = None if not mine or None in mine else max(float(s) for s in mine if s is not None)
    return out


async def _send_urgent(settings: Settings, tag: str) -> dict[str, Any]:
    """After URGENT_AFTER_S, the urgent requests at once, each timed from its call to its result."""
    client = SnapshotClient(settings, result_timeout_s=URGENT_TIMEOUT_S, connection_name="snapworker-bench-urgent")
    async with client:  # connected before the clock starts
        await asyncio.sleep(URGENT_AFTER_S)

        async def one(group: str, body: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"group": group, "project_id": body["project_id"], "seconds": None}
            started = time.perf_counter()
            try:
                result = await client.create_snapshots(body["project_id"], body["desktop_ids"], priority="urgent")
            except Exception as exc:  # a lost or late urgent request is a figure, not a crash of the bench
                out["error"] = repr(exc)
                return out
            out["seconds"] = round(time.perf_counter() - started, 3)
            out["status"] = result.status
            return out

        sent_at = time.perf_counter()
        sent = await asyncio.gather(*(one(group, body) for group, body in urgent_bodies(tag)))
    return {"sent_after_spawn_s": URGENT_AFTER_S, "sent": sent, "all_in_s": round(time.perf_counter() - sent_at, 3)}


async def urgent_mode(ctx: Context, run_index: int, mode: str) -> dict[str, Any]:
    sizes = ctx.sizes
    workload = Workload(sizes.urgent_backlog, sizes.urgent_projects)
    workers = urgent_settings(mode, ctx.redis_url)
    redis = RedisDb(ctx.redis_url) if mode == "fleet" else None

    async def flush() -> str:
        assert redis is not None
        return await redis.command("FLUSHDB")

    async def beside(queues: Queues, tag: str) -> dict[str, Any]:
        return await _send_urgent(Settings(amqp_url=ctx.amqp_url, **queues.settings()), tag)  # type: ignore[arg-type]

    data = await run_bound(
        ctx,
        name=f"urgent-{mode}-r{run_index}",
        workload=workload,
        per_minute=API_PER_MINUTE,
        workers=workers,
        timeout_s=ctx.bound_timeout_s or timeout_for(workload),
        before_spawn=flush if redis else None,
        during=beside,
    )
    if redis is not None:
        await redis.command("FLUSHDB")  # leave the database as found: empty
    data["mode"] = mode
    data["workers"] = len(workers)
    # the fewest calls for the backlog and the urgent requests together (the urgent calls are calls spent)
    bodies = [json.loads(body) for body, _ in workload.messages("t")] + [b for _, b in urgent_bodies("t")]
    data["calls_minimum_backlog"] = data["calls_minimum"]
    data["calls_minimum"] = minimum_calls_of_requests(bodies)
    if data.get("outcome") == "ok" and data.get("calls_total"):
        data["economy"] = data["calls_minimum"] / data["calls_total"]
    add_drain_figures(data)
    sent = (data.get("during") or {}).get("sent") or []
    data["urgent_p100_s"] = p100_by_group(sent)
    data["urgent_statuses"] = [s.get("status") or s.get("error") for s in sent]
    data["batches_urgent"] = sum(int((t.get("batches_by_reason") or {}).get("urgent", 0)) for t in data["totals"])
    return data


async def urgent(ctx: Context, run_index: int) -> dict[str, Any]:
    """Both modes, one after the other."""
    return {"modes": list(URGENT_MODES)} | {mode: await urgent_mode(ctx, run_index, mode) for mode in URGENT_MODES}


def _p100_row(mode: str, group: str, runs: Sequence[Mapping[str, Any]]) -> Row:
    worst = spread((r.get("urgent_p100_s") or {}).get(group) for r in runs)
    target = TARGET_P100_S[mode]
    every = all((r.get("urgent_p100_s") or {}).get(group) is not None for r in runs)
    accepted = all(all(s == "accepted" for s in r.get("urgent_statuses") or ["none"]) for r in runs)
    ok = every and accepted and worst.high is not None and worst.high <= target
    return Row(
        f"  urgent p100, {PER_GROUP} requests, {group} (s)",
        worst.show("{:.2f}"),
        "publish -> result received",
        "",
        f"<= {target:g}",
        verdict(ok),
    )


def urgent_rows(runs: Sequence[Mapping[str, Any]], medians: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for mode in URGENT_MODES:
        mode_runs = [r[mode] for r in runs if mode in r]
        if not mode_runs:
            continue
        first = mode_runs[0]
        who = "1 worker, defaults" if mode == "single" else f"{first['workers']} workers, REDIS_URL, PARTITIONS 16"
        rows.append(
            Row(
                f"urgent ({who}): {first['requests']:,} req backlog over {first['projects']} projects",
                "",
                "",
                "",
                "",
                "",
            )
        )
        worst = {g: spread((r.get("urgent_p100_s") or {}).get(g) for r in mode_runs) for g in GROUPS}
        medians[f"urgent_{mode}_p100_s"] = {g: w.to_json() for g, w in worst.items()}
        rows += [_p100_row(mode, group, mode_runs) for group in GROUPS]
        economy = spread(r.get("economy") for r in mode_runs)
        calls = spread(r.get("calls_total") for r in mode_runs)
        medians[f"urgent_{mode}_economy"] = economy.to_json()
        finished = all(r.get("outcome") == "ok" for r in mode_runs)
        rows.append(
            Row(
                "  economy, backlog and urgent (min calls / calls)",
                f"{economy.show('{:.3f}')} ({calls.show()} calls, min {first.get('calls_minimum')})",
                f"batches cut for urgency: {spread(r.get('batches_urgent') for r in mode_runs).show()}",
                "",
                f">= {ECONOMY_TARGET}",
                verdict(finished and economy.median is not None and economy.median >= ECONOMY_TARGET),
            )
        )
        drain = spread(r.get("seconds") for r in mode_runs)
        throttled = spread(r.get("calls_429") for r in mode_runs)
        ratios = spread(r.get("drain_vs_ideal") for r in mode_runs)
        medians[f"urgent_{mode}_drain_s"] = drain.to_json()
        rows.append(
            Row(
                "  drain, first spawn -> all backlog results (s)",
                drain.show("{:.1f}") if finished else "not finished",
                f"ideal {first.get('ideal_drain_s') or 0:.1f}; 429s {throttled.show()}",
                ratios.show("{:.2f}x"),
                "each answered once",
                verdict(all(answered_once(r) for r in mode_runs)),
            )
        )
    return rows


def brief(data: Mapping[str, Any]) -> str:
    parts = []
    for mode in data.get("modes") or ():
        d = data[mode]
        worst = ", ".join(f"{g} {v:.2f} s" if v is not None else f"{g} n/a" for g, v in d["urgent_p100_s"].items())
        drain = f"{d['seconds']:.1f} s" if d.get("seconds") else f"{d.get('outcome')} at {d.get('elapsed_s')} s"
        economy = d.get("economy")
        parts.append(
            f"{mode}: urgent p100 {worst} ({d['urgent_statuses']}); economy "
            f"{'n/a' if economy is None else f'{economy:.3f}'} ({d.get('calls_total')} calls, min "
            f"{d.get('calls_minimum')}); drain {drain}; urgent batches {d.get('batches_urgent')}"
        )
    return "urgent: " + "; ".join(parts)
