"""A recovery storm: 5,000 requests a crashed worker left in doubt, reconciled under the read budget.

What a worker killed in the middle of a backlog leaves behind, built exactly, so that every run starts from the same
state: each of ``REQUESTS`` single-desktop requests (``PROJECTS`` projects) has its intent recorded in the SQLite
store, one attempt per 100 requests of a project (as a batch of 100 would); the calls of ``MADE_SHARE`` of those
attempts were made (the simulator holds their snapshots, each carrying the attempt's marker, as the dead worker's
call wrote it), the others never left. The requests are back on the queue. A worker at its defaults (job tracking
on, its reads and the listings sharing READ_RATE_LIMIT) takes them, against a simulator at the real limit of 100
batch-create calls a minute. Figures:

- the results: accepted (from the snapshots found, or sent anew), and anything else;
- the snapshot listings it made and the busiest second of reads at the API, against READ_RATE_LIMIT;
- batch-create calls (the desktops found absent, sent once), results reporting ``maybe_created`` (0: no POST
  waits for a pooled connection, and every doubt is settled by the listings), and desktops snapshotted twice (0);
- the time to the last result.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aio_pika.abc import AbstractIncomingMessage

from bench.broker import Queues
from bench.infra import SimProcess
from bench.limited import API_PER_MINUTE
from bench.procs import Measured
from bench.scenarios import PUBLISH_IN_FLIGHT, Context
from snapworker.contract.models import SnapshotRequest, SnapshotResult
from snapworker.domain.snapshots import marker
from snapworker.idempotency.sqlite_store import SqliteStore
from snapworker.idempotency.store import INTENT, Row, fingerprint, json_strings
from snapworker.settings import Settings
from snapworker.tracking.loop import tracking_queues

__all__ = ["brief", "recovery"]

REQUESTS = 5_000
PROJECTS = 10
MADE_SHARE = 0.8
TIMEOUT_S = 300.0
READ_RATE_LIMIT = Settings().read_rate_limit  # the default the worker runs with
_SETUP_TOKEN = "bench-recovery-setup"  # the dead worker's calls: a user of their own, not the worker's budget


def _requests(tag: str) -> list[SnapshotRequest]:
    return [
        SnapshotRequest(
            project_id=f"p{i % PROJECTS:02d}-{tag}", desktop_ids=(f"d-{tag}-{i:06d}",), request_id=f"r-{tag}-{i:06d}"
        )
        for i in range(REQUESTS)
    ]


def _attempts(requests: list[SnapshotRequest]) -> list[tuple[str, list[SnapshotRequest]]]:
    """The dead worker's attempts: 100 requests of one project each."""
    by_project: dict[str, list[SnapshotRequest]] = {}
    for request in requests:
        by_project.setdefault(request.project_id, []).append(request)
    return [(uuid.uuid4().hex, group[k : k + 100]) for group in by_project.values() for k in range(0, len(group), 100)]


async def _crash_state(
    state_dir: Path, request_queue: str, sim: SimProcess, attempts: list[tuple[str, list[SnapshotRequest]]]
) -> int:
    """Record every attempt's intents as the journal does, and make the snapshots of the first MADE_SHARE of
    them as their calls would have; the desktops whose snapshots exist."""
    store = SqliteStore(state_dir, ttl_s=3600.0, max_rows=1_000_000)
    now = time.time() - 60  # the crash was a minute ago
    try:
        rows = [
            Row(f"{request_queue}\x1f{r.request_id}", fingerprint(r), INTENT, attempt, json_strings(r.desktop_ids), now)
            for attempt, group in attempts
            for r in group
        ]
        await store.record_intent(rows)
    finally:
        await store.close()
    made = 0
    async with aiohttp.ClientSession() as http:
        for attempt, group in attempts[: round(len(attempts) * MADE_SHARE)]:
            body = {
                "desktop_ids": [d for r in group for d in r.desktop_ids],
                "system_disk_snapshot": {"description": marker(attempt)},
            }
            url = f"{sim.url}/v2/{group[0].project_id}/snapshots/batch-create"
            async with http.post(url, json=body, headers={"X-Auth-Token": _SETUP_TOKEN}) as answer:
                answer.raise_for_status()
            made += len(group)
    return made


async def recovery(ctx: Context, run_index: int) -> dict[str, Any]:
    name = f"recovery-r{run_index}"
    queues = Queues.fresh(name)
    prefix = queues.request.removesuffix(".requests")
    tracking = {"tracking_queue": f"{prefix}.tracking", "completion_queue": f"{prefix}.completions"}
    state_dir = ctx.log_dir / "state" / name
    tag = uuid.uuid4().hex[:6]
    requests = _requests(tag)
    attempts = _attempts(requests)
    out: dict[str, Any] = {"requests": REQUESTS, "projects": PROJECTS, "read_rate_limit": READ_RATE_LIMIT}
    await ctx.broker.declare(queues)
    sim = await SimProcess.start(
        ctx.log_dir / f"{name}-simulator.log",
        token=f"bench-token-{uuid.uuid4().hex}",
        rate_per_minute=API_PER_MINUTE,
        extra_args=["--token", _SETUP_TOKEN],
    )
    proc: Measured | None = None
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    seen: set[str] = set()
    maybe_created_posts = 0

    def on_result(message: AbstractIncomingMessage) -> None:
        nonlocal maybe_created_posts
        result = SnapshotResult.model_validate_json(message.body)
        seen.add(result.request_id)
        statuses[result.status] += 1
        for error in result.errors:
            codes[error.error_code] += 1
            maybe_created_posts += error.maybe_created

    channel = None
    try:
        out["snapshots_made_before"] = await _crash_state(state_dir, queues.request, sim, attempts)
        messages = [(r.model_dump_json(exclude_none=True).encode(), r.request_id or "") for r in requests]
        await ctx.broker.publish_many(queues.request, messages, in_flight=PUBLISH_IN_FLIGHT, timeout_s=120.0)
        before = await sim.stats()  # the dead worker's calls, made above: not the worker's
        channel = await ctx.broker.subscribe([queues.result, queues.error], on_result)
        overrides = {"state_dir": str(state_dir), "track_jobs": "true", **tracking}
        proc = ctx.spawn("worker", queues, f"{name}-worker", overrides, sim=sim, base={})
        started = time.perf_counter()
        while len(seen) < REQUESTS and time.perf_counter() - started < TIMEOUT_S and proc.alive():  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # a poll: the process may also die
        out["seconds"] = round(time.perf_counter() - started, 2)
        out["outcome"] = "ok" if len(seen) >= REQUESTS else ("died" if not proc.alive() else "timeout")
        stats = await sim.stats()
        out |= {
            "answered": len(seen),
            "statuses": dict(statuses),
            "error_codes": dict(codes),
            "post_maybe_created": maybe_created_posts,
            "snapshot_listings": stats.get("snapshot_queries"),
            "job_reads": int(stats.get("job_queries") or 0) + int(stats.get("sub_job_queries") or 0),
            "max_reads_in_one_second": stats.get("max_reads_in_one_second"),
            "batch_create_calls": int(stats.get("calls_total") or 0) - int(before.get("calls_total") or 0),
            "calls_by_status": stats.get("calls_by_status"),
            "repeated_snapshots": stats.get("repeated_snapshots"),  # a desktop in a second job
            "desktops_sent": int(stats.get("distinct_desktops") or 0) - int(before.get("distinct_desktops") or 0),
        }
    finally:
        if channel is not None:
            await channel.close()
        if proc is not None:
            await proc.stop()
            out["worker_log"] = str(proc.log_path)
            out["lost_answer_warnings"] = proc.log_text().count("may have been processed")
        await sim.stop()
        await ctx.broker.delete(queues)
        cleanup = await ctx.broker._conn.channel()
        try:
            names = Settings(tracking_queue=tracking["tracking_queue"], completion_queue=tracking["completion_queue"])
            for queue in tracking_queues(names):
                await cleanup.queue_delete(queue)
        finally:
            await cleanup.close()
    return out


def brief(data: dict[str, Any]) -> str:
    return (
        f"recovery: {data.get('answered')}/{data.get('requests')} answered in {data.get('seconds')} s "
        f"({json.dumps(data.get('statuses'))}); {data.get('snapshot_listings')} listings, at most "
        f"{data.get('max_reads_in_one_second')} reads in any second (READ_RATE_LIMIT {data.get('read_rate_limit'):g}); "
        f"{data.get('batch_create_calls')} batch-create calls, {data.get('post_maybe_created')} POSTs maybe_created, "
        f"{data.get('repeated_snapshots')} repeated snapshots"
    )
