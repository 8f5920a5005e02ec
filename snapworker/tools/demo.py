"""``snapworker demo``: the whole flow on this machine, with the simulator in-process and the local RabbitMQ.

It publishes a realistic mix (several projects, a request of more than 100 desktops, repeated desktops, other
snapshot settings, an invalid message, an unknown desktop), runs a real Worker until every result is in, prints
a summary, and deletes the queues it declared: after the worker stopped and its own readers closed, so no
consumer is cancelled under anyone's feet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from snapworker.amqp.partitioning import request_queues
from snapworker.contract.models import SnapshotCompletion, SnapshotRequest, SnapshotResult
from snapworker.core import MergeKey
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings, load_settings
from snapworker.simulator.app import SimConfig, Simulator
from snapworker.tools.broker import BrokerTools, RawMessage
from snapworker.tracking.loop import tracking_queues

__all__ = ["DemoReport", "run_demo"]

_TOKEN = "demo-token"
UNKNOWN_DESKTOP = "desk-unknown-0000"


@dataclass
class DemoReport:
    queue_prefix: str = ""
    """Every queue of the run is named ``<queue_prefix>.*`` (and deleted at its end)."""
    published: int = 0
    results: dict[str, SnapshotResult] = field(default_factory=dict)
    requests_by_status: Counter[str] = field(default_factory=Counter)
    desktops_requested: int = 0
    api_calls: int = 0
    api_calls_minimum: int = 0
    batch_sizes: dict[str, int] = field(default_factory=dict)
    flushes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    completions: dict[str, SnapshotCompletion] = field(default_factory=dict)
    job_reads: int = 0
    completed_seconds: float = 0.0

    def table(self) -> str:
        rows = [("requests published", str(self.published)), ("results received", str(len(self.results)))]
        rows += [(f"  {status}", str(n)) for status, n in sorted(self.requests_by_status.items())]
        jobs = sum(len(r.jobs) for r in self.results.values())
        rows += [
            ("desktops requested", str(self.desktops_requested)),
            ("job entries in results", str(jobs)),
            ("API calls made", str(self.api_calls)),
            ("API calls, minimum possible", str(self.api_calls_minimum)),
            ("calls per desktop", f"{self.api_calls / max(1, self.desktops_requested):.3f}"),
            ("batch fill (desktops per accepted call)", self._fill()),
            (
                "batches flushed: full / linger / pressure / urgent / shutdown",
                "/".join(str(self.flushes[r]) for r in ("full", "linger", "pressure", "urgent", "shutdown")),
            ),
            ("wall time", f"{self.seconds:.1f} s"),
            ("completions received (every job followed to its end)", str(len(self.completions))),
        ]
        rows += [
            (f"  {status}", str(n))
            for status, n in sorted(Counter(c.status for c in self.completions.values()).items())
        ]
        rows += [
            ("job reads (GET), one per job per look", str(self.job_reads)),
            ("wall time until the last completion", f"{self.completed_seconds:.1f} s"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>8}" for name, value in rows)

    def _fill(self) -> str:
        calls = sum(self.batch_sizes.values())
        desktops = sum(int(size) * n for size, n in self.batch_sizes.items())
        return f"{desktops / max(1, calls):.1f} / 100"


def _mix(rng: random.Random) -> list[tuple[bytes, str | None]]:
    """(body, content type) of every message to publish."""
    bodies: list[dict[str, Any]] = []
    projects = [f"proj{n:02d}{uuid.uuid4().hex[:6]}" for n in range(5)]
    for project in projects:
        for i in range(150):
            bodies.append({"project_id": project, "desktop_ids": [f"desk-{project}-{i:04d}"]})
    # a large request spanning several calls, and repeats of desktops other requests already asked for
    bodies.append({"project_id": projects[0], "desktop_ids": [f"desk-big-{i:04d}" for i in range(250)]})
    bodies += [{"project_id": projects[1], "desktop_ids": [f"desk-{projects[1]}-{i:04d}"]} for i in range(20)]
    # other snapshot settings: a merge key of its own
    bodies += [
        {
            "project_id": projects[2],
            "desktop_ids": [f"desk-{projects[2]}-{i:04d}"],
            "disk_type": "ALL",
            "system_disk_snapshot": {"name": "pre-upgrade", "description": "before the 2026-12 upgrade"},
        }
        for i in range(30)
    ]
    # an unknown desktop: its batch is rejected with 404 and the worker isolates the one bad request
    bodies.append({"project_id": projects[3], "desktop_ids": [UNKNOWN_DESKTOP], "request_id": "has-unknown-desktop"})
    rng.shuffle(bodies)
    messages: list[tuple[bytes, str | None]] = [(json.dumps(b).encode(), "application/json") for b in bodies]
    messages.append((b"{not json", "application/json"))
    messages.append((json.dumps({"project_id": "p/../x", "desktop_ids": ["d1"]}).encode(), "application/json"))
    return messages


def _minimum_calls(messages: list[tuple[bytes, str | None]], max_batch: int) -> tuple[int, int]:
    distinct: dict[MergeKey, set[str]] = defaultdict(set)
    requested = 0
    for body, _ in messages:
        try:
            request = SnapshotRequest.model_validate_json(body)
        except ValueError:
            continue
        requested += len(request.desktop_ids)
        distinct[MergeKey.of(request)].update(request.desktop_ids)
    return sum(math.ceil(len(d) / max_batch) for d in distinct.values()), requested


async def run_demo(base: Settings | None = None, *, seed: int = 7, timeout_s: float = 120.0) -> DemoReport:
    """Run the demo and return its report (the CLI prints it)."""
    base = base or load_settings()
    prefix = f"snapworker-demo.{uuid.uuid4().hex[:8]}"
    sim = Simulator(
        SimConfig(
            tokens=frozenset({_TOKEN}),
            unknown_desktops=frozenset({UNKNOWN_DESKTOP}),
            job_duration_s=1.0,  # jobs run a moment, then the tracking reports how each desktop ended
        )
    )
    # The mix asks for some desktops twice on purpose (repeats, other snapshot settings): the simulator's warning
    # about each desktop snapshotted again is the crash tests' alarm, not news for someone trying snapworker out.
    sim_log = logging.getLogger("snapworker.simulator")
    sim_log_level = sim_log.level
    sim_log.setLevel(logging.ERROR)
    await sim.start(host="127.0.0.1", port=0)
    settings = load_settings(
        **{
            **base.model_dump(exclude={"api_url", "auth_token", "access_key", "secret_key"}),
            "amqp_url": base.amqp_url.get_secret_value(),
            "api_url": sim.url,
            "auth_token": _TOKEN,
            "request_queue": f"{prefix}.requests",
            "result_queue": f"{prefix}.results",
            "error_queue": f"{prefix}.errors",
            "dead_letter_queue": f"{prefix}.dead-letter",
            "track_jobs": True,
            "tracking_queue": f"{prefix}.tracking",
            "completion_queue": f"{prefix}.completions",
            "track_first_poll_s": 0.5,
            "track_max_poll_s": 1.0,
            "rate_limit": 20.0,
            "rate_burst": 10,
            "prefetch": 2000,
            # the demo reads the completion queue with a plain declare: no x-max-length bound to agree with
            "completion_queue_max_length": 0,
        }
    )
    report = DemoReport(queue_prefix=prefix)
    messages = _mix(random.Random(seed))
    report.published = len(messages)
    report.api_calls_minimum, report.desktops_requested = _minimum_calls(messages, settings.max_batch)
    all_in = asyncio.Event()

    completed = asyncio.Event()

    def on_completion(body: bytes, _headers: object) -> None:
        completion = SnapshotCompletion.model_validate_json(body)
        report.completions[completion.request_id] = completion
        expected = sum(1 for r in report.results.values() if r.jobs)
        if all_in.is_set() and len(report.completions) >= expected:
            completed.set()

    def on_result(body: bytes, _headers: object) -> None:
        result = SnapshotResult.model_validate_json(body)
        report.results[result.request_id] = result
        if len(report.results) >= report.published:
            all_in.set()

    worker = Worker(settings)
    started = time.perf_counter()
    running = asyncio.create_task(worker.run())
    try:
        # The demo's own consumers live on this connection; it closes before the queues are deleted, so the
        # broker never has to cancel a live consumer (aiormq would warn about each).
        async with BrokerTools(settings, connection_name="snapworker-demo") as broker:
            for queue in (settings.result_queue, settings.error_queue):
                await broker.subscribe(queue, on_result)
            await broker.subscribe(settings.completion_queue, on_completion)
            await asyncio.wait_for(worker.consuming.wait(), timeout=30)
            # all at once, confirms awaited together, as a busy publishing service would
            await broker.publish_raw(
                [
                    RawMessage(
                        body,
                        settings.request_queue,
                        content_type=content_type or "",
                        correlation_id=f"demo-{n}",
                        message_id=f"{prefix}-{n}",
                    )
                    for n, (body, content_type) in enumerate(messages)
                ]
            )
            await asyncio.wait_for(all_in.wait(), timeout=timeout_s)
            report.seconds = time.perf_counter() - started
            if len(report.completions) < sum(1 for r in report.results.values() if r.jobs):
                await asyncio.wait_for(completed.wait(), timeout=timeout_s)
            report.completed_seconds = time.perf_counter() - started
            await _stop(worker, running)  # first the worker, while the queues it consumes still exist
    finally:
        try:
            await _stop(worker, running)
        finally:
            await _clean_up(settings, sim)
            sim_log.setLevel(sim_log_level)
    stats = sim.stats()
    report.api_calls = int(stats["calls_total"])
    report.batch_sizes = dict(stats["batch_sizes"])
    report.flushes = Counter(worker.stats.batches_by_reason)
    report.job_reads = int(stats["job_queries"]) + int(stats.get("sub_job_queries", 0))
    report.requests_by_status = Counter(r.status for r in report.results.values())
    return report


async def _clean_up(settings: Settings, sim: Simulator) -> None:
    """Delete the demo's queues (nobody consumes them any more) and stop the simulator."""
    try:
        async with BrokerTools(settings, connection_name="snapworker-demo-cleanup") as broker:
            await broker.delete_queues(
                [
                    settings.result_queue,
                    settings.error_queue,
                    settings.dead_letter_queue,
                    *request_queues(settings.request_queue, settings.partitions),  # partitions, urgent twins
                    *tracking_queues(settings),
                ]
            )
    finally:
        await sim.stop()


async def _stop(worker: Worker, running: asyncio.Task[None]) -> None:
    """Close the worker (drained) and wait for its run to end; again is a no-op."""
    if not running.done():
        await worker.close()
    await running


def main(base: Settings) -> int:
    report = asyncio.run(run_demo(base))
    print(report.table())
    return 0 if len(report.results) == report.published else 1
