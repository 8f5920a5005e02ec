"""Job tracking is visible in a worker's metrics: units started, finished, held and not yet published, job reads by
outcome, completions by status (and those undeliverable), and the lag from a request's result to its completion.
Before, only the tracker's totals log line at shutdown told any of it."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest

from snapworker.cloud.jobs import JobReader
from snapworker.domain.jobs import JobView
from snapworker.ops.metrics import build_registry
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import start_unit
from tests.test_metrics_names import DASHBOARD
from tests.tracking.test_loop_backlog import SETTINGS, FakeBroker, broker, stop, until
from tests.tracking.test_routing import COMPLETIONS, answered, deliver, running_tracker
from tests.tracking.test_state import view

__all__ = ["broker"]  # the fixture


def registry_of(tracker: Tracker) -> CollectorRegistry:
    """The registry of a worker whose tracker is ``tracker``, as ``run()`` sets it when TRACK_JOBS is on."""
    worker = Worker(Settings())
    worker._outcomes.tracker = tracker
    registry, _ = build_registry(worker)
    return registry


def new_tracker() -> Tracker:
    return Tracker(SETTINGS, cast(JobReader, object()))


class _BlockedReader:
    """Every read waits for ``go``, then tells the job is still running."""

    reads = 0

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def read(self, _project: str, job_id: str) -> JobView:
        await self.go.wait()
        return view(job_id, "RUNNING", {f"desk-{job_id}": "RUNNING"})


def test_a_worker_that_does_not_track_exposes_no_tracking_series() -> None:
    registry, _ = build_registry(Worker(Settings()))
    assert "snapworker_tracking" not in generate_latest(registry).decode()


def test_a_tracking_worker_exposes_every_tracking_series_the_dashboard_queries() -> None:
    text = generate_latest(registry_of(new_tracker())).decode()
    exposed = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if not line.startswith("#")}
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bsnapworker_tracking_[a-z_]+\b", target["expr"])
    }
    assert len(queried) >= 5
    assert queried - exposed == set()


async def test_the_metrics_after_a_look_that_completes_two_requests_show_two_succeeded_and_their_lag(
    broker: FakeBroker,
) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    registry = registry_of(tracker)
    await deliver(broker, answered("r1", None), answered("r2", None))
    text = generate_latest(registry).decode()
    assert 'snapworker_tracking_completions_total{status="succeeded"} 2.0' in text
    assert 'snapworker_tracking_completions_total{status="failed"} 0.0' in text
    assert registry.get_sample_value("snapworker_tracking_completion_lag_seconds_count") == 2
    assert registry.get_sample_value("snapworker_tracking_completion_lag_seconds_bucket", {"le": "10"}) == 2
    await stop(tracker, running)


async def test_a_unit_whose_requests_all_completed_counts_as_finished(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    await deliver(broker, answered("r1", None))
    registry = registry_of(tracker)
    assert registry.get_sample_value("snapworker_tracking_units_finished_total") == 1
    assert registry.get_sample_value("snapworker_tracking_looks_total") == 1
    await stop(tracker, running)


async def test_a_unit_still_running_after_a_look_is_not_finished(broker: FakeBroker) -> None:
    reader = _BlockedReader()
    reader.go.set()
    tracker = Tracker(SETTINGS, cast(JobReader, reader))
    broker.up.set()
    running = asyncio.create_task(tracker.run())
    await until(lambda: broker.consuming)
    await deliver(broker, answered("r1", None))
    registry = registry_of(tracker)
    assert registry.get_sample_value("snapworker_tracking_units_finished_total") == 0
    assert registry.get_sample_value("snapworker_tracking_job_reads_total", {"outcome": "running"}) == 1
    await stop(tracker, running)


async def test_a_unit_being_looked_at_is_held_until_its_look_is_committed(broker: FakeBroker) -> None:
    reader = _BlockedReader()
    tracker = Tracker(SETTINGS, cast(JobReader, reader))
    registry = registry_of(tracker)
    broker.up.set()
    running = asyncio.create_task(tracker.run())
    await until(lambda: broker.consuming)
    looking = asyncio.create_task(deliver(broker, answered("r1", None)))
    await until(lambda: registry.get_sample_value("snapworker_tracking_units_held") == 1)
    reader.go.set()
    message = await looking
    assert message.settled == "ack"
    assert registry.get_sample_value("snapworker_tracking_units_held") == 0
    await stop(tracker, running)


async def test_units_started_while_the_tracking_connection_is_down_show_as_unpublished() -> None:
    tracker = new_tracker()
    registry = registry_of(tracker)
    await tracker.start([answered("r1", None)])
    assert registry.get_sample_value("snapworker_tracking_units_unpublished") == 1
    assert registry.get_sample_value("snapworker_tracking_units_started_total") == 0


async def test_job_reads_are_counted_by_outcome() -> None:
    class _Reader:
        reads = 0

        async def read(self, _project: str, job_id: str) -> JobView:
            return view(job_id, "SUCCESS", {"d1": "SUCCESS"})

    tracker = Tracker(SETTINGS, cast(JobReader, _Reader()))
    unit = start_unit([answered("r1", None), answered("r2", None)], datetime.now(UTC))
    assert unit is not None
    await tracker._look(unit)
    registry = registry_of(tracker)
    assert registry.get_sample_value("snapworker_tracking_job_reads_total", {"outcome": "ended"}) == 2
    assert registry.get_sample_value("snapworker_tracking_job_reads_total", {"outcome": "error"}) == 0


async def test_a_dropped_completion_counts_as_undeliverable_and_under_no_status(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue="")
    broker.missing = {"gone"}
    await deliver(broker, answered("r1", "gone"))
    registry = registry_of(tracker)
    assert registry.get_sample_value("snapworker_tracking_completions_undeliverable_total") == 1
    assert registry.get_sample_value("snapworker_tracking_completions_total", {"status": "succeeded"}) == 0
    assert registry.get_sample_value("snapworker_tracking_completion_lag_seconds_count") == 0
    await stop(tracker, running)


async def test_a_completion_detoured_to_the_completion_queue_counts_by_its_status(broker: FakeBroker) -> None:
    tracker, _, running = await running_tracker(broker, completion_queue=COMPLETIONS)
    broker.missing = {"gone"}
    await deliver(broker, answered("r1", "gone"))
    registry = registry_of(tracker)
    assert registry.get_sample_value("snapworker_tracking_completions_total", {"status": "succeeded"}) == 1
    assert registry.get_sample_value("snapworker_tracking_completions_undeliverable_total") == 0
    await stop(tracker, running)
