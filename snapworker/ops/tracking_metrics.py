"""The job-tracking series of a worker (``snapworker_tracking_*``), read from its tracker at scrape time.

Every figure is this worker's: the units themselves live in RabbitMQ between looks (see
:mod:`snapworker.tracking.loop`), so how many the fleet tracks is the depth of the tracking and wait queues,
which RabbitMQ shows. What one worker can tell truthfully is what it did (units started and finished, job reads,
completions) and what it holds now (the tracking messages it is looking at, the units it could not publish yet).
The tracker is read through the protocols below: ops does not import tracking (the runtime wires them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

__all__ = ["TrackerView", "tracking_metrics"]

_READ_OUTCOMES = ("running", "ended", "not_found", "refused", "error")
_COMPLETION_STATUSES = ("succeeded", "failed", "partial", "unknown")


class _Backlog(Protocol):
    def __len__(self) -> int: ...
    @property
    def dropped(self) -> int: ...


class _Lag(Protocol):
    @property
    def sum_s(self) -> float: ...
    def buckets(self) -> list[tuple[str, float]]: ...


class _TrackingStats(Protocol):
    """:class:`snapworker.tracking.stats.TrackingStats`, as far as the metrics read it."""

    @property
    def units_finished(self) -> int: ...
    @property
    def units_held(self) -> int: ...
    @property
    def reads_by_outcome(self) -> Mapping[str, int]: ...
    @property
    def completions_by_status(self) -> Mapping[str, int]: ...
    @property
    def lag(self) -> _Lag: ...


class TrackerView(Protocol):
    """What the collector reads of a worker's :class:`snapworker.tracking.loop.Tracker`."""

    @property
    def units_started(self) -> int: ...
    @property
    def looks(self) -> int: ...
    @property
    def completions_undeliverable(self) -> int: ...
    @property
    def requests_untracked(self) -> int: ...
    @property
    def backlog(self) -> _Backlog: ...
    @property
    def stats(self) -> _TrackingStats: ...


def tracking_metrics(tracker: TrackerView) -> Iterator[Metric]:
    """The tracking series of one worker's tracker (a worker with TRACK_JOBS off has none)."""
    stats = tracker.stats
    yield CounterMetricFamily(
        "snapworker_tracking_units_started",
        "Tracking units whose first tracking message this worker published (a unit: the tracked requests of one "
        "batch outcome, with their jobs). Units the fleet tracks now: the tracking and wait queues' depth.",
        value=tracker.units_started,
    )
    yield CounterMetricFamily(
        "snapworker_tracking_units_finished",
        "Tracking units this worker finished: a look published their last completions and acked the unit's "
        "message with no next one. Any worker may finish a unit another one started.",
        value=stats.units_finished,
    )
    yield GaugeMetricFamily(
        "snapworker_tracking_units_held",
        "Tracking messages this worker holds now, unacked: being looked at (job reads, then the commit). Units "
        "waiting for their next look are in RabbitMQ's wait queues, not in any worker.",
        value=stats.units_held,
    )
    yield GaugeMetricFamily(
        "snapworker_tracking_units_unpublished",
        "Tracking units kept in this worker's memory because their first tracking message could not be "
        "published yet (the tracking connection is down); lost if the worker dies.",
        value=len(tracker.backlog),
    )
    yield CounterMetricFamily(
        "snapworker_tracking_units_dropped",
        "Tracking units dropped unpublished because this worker's backlog was full: their requests get no completion.",
        value=tracker.backlog.dropped,
    )
    yield CounterMetricFamily(
        "snapworker_tracking_looks",
        "Tracking messages this worker handled: each look reads every job of its unit still running, once.",
        value=tracker.looks,
    )
    reads = CounterMetricFamily(
        "snapworker_tracking_job_reads",
        "Job reads by what they told: running or ended (the job), not_found (the API does not know it: its "
        "desktops end unknown), refused (credential refused) or error (read again at the next look).",
        labels=["outcome"],
    )
    for outcome in _READ_OUTCOMES:
        reads.add_metric([outcome], stats.reads_by_outcome.get(outcome, 0))
    yield reads
    completions = CounterMetricFamily(
        "snapworker_tracking_completions",
        "Completions this worker published (confirmed by the broker), by status; one per tracked request, "
        "rarely two (see docs/design.md, completions: following each job to its end).",
        labels=["status"],
    )
    for status in _COMPLETION_STATUSES:
        completions.add_metric([status], stats.completions_by_status.get(status, 0))
    yield completions
    yield CounterMetricFamily(
        "snapworker_tracking_completions_undeliverable",
        "Completions dropped: their reply_to queue is gone and SNAPWORKER_COMPLETION_QUEUE is not set.",
        value=tracker.completions_undeliverable,
    )
    yield CounterMetricFamily(
        "snapworker_tracking_requests_untracked",
        "Requests with jobs that are not tracked: no reply_to and no SNAPWORKER_COMPLETION_QUEUE (nobody asked).",
        value=tracker.requests_untracked,
    )
    lag = stats.lag
    yield HistogramMetricFamily(
        "snapworker_tracking_completion_lag_seconds",
        "Tracked requests, from their result (the batch outcome that started tracking them) to their completion "
        "confirmed by the broker.",
        buckets=lag.buckets(),
        sum_value=lag.sum_s,
    )
