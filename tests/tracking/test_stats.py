"""What the tracker counts for its metrics, sans I/O: each job read's outcome, completions by status, and the lag
from a request's result to its completion in the buckets of a Prometheus histogram."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import get_args

import pytest

from snapworker.contract.models import CompletionStatus
from snapworker.errors import ApiClientError, ApiCredentialRefused, ApiServerError, ApiTransportError
from snapworker.ops import tracking_metrics
from snapworker.tracking.stats import READ_OUTCOMES, CompletionLag, TrackingStats, read_outcome
from tests.tracking.test_state import T0, result, unit, view

NOT_FOUND = ApiClientError("no such job", http_status=404, error_code="WKS.0202")
REFUSED = ApiCredentialRefused("decrypt token fail", http_status=401, error_code="APIG.0301")


@pytest.mark.parametrize(
    ("read", "outcome"),
    [
        (view("job-1", "RUNNING", {"d1": "RUNNING"}), "running"),
        (view("job-1", "SUCCESS", {"d1": "SUCCESS"}), "ended"),
        (view("job-1", "FAIL", {"d1": "FAIL"}), "ended"),
        (NOT_FOUND, "not_found"),
        (REFUSED, "refused"),
        (ApiServerError("backend unavailable", http_status=500, error_code="WKS.0005"), "error"),
        (ApiTransportError("connection reset"), "error"),
    ],
)
def test_a_job_read_counts_under_what_it_told(read: object, outcome: str) -> None:
    assert read_outcome(read) == outcome


def test_a_cancelled_read_is_not_counted() -> None:
    stats = TrackingStats()
    stats.count_reads([asyncio.CancelledError()])
    assert sum(stats.reads_by_outcome.values()) == 0


def test_the_metrics_list_every_read_outcome_and_completion_status_tracking_counts() -> None:
    # ops cannot import tracking: its label values are its own copy, kept equal here
    assert tracking_metrics._READ_OUTCOMES == READ_OUTCOMES
    assert set(tracking_metrics._COMPLETION_STATUSES) == set(get_args(CompletionStatus))


def test_published_completions_count_by_status_with_one_lag_observation_each() -> None:
    tracked = unit(result("r1", ("job-1", ("d1",))), result("r2", ("job-2", ("d2",))))
    tracked.observe(view("job-1", "SUCCESS", {"d1": "SUCCESS"}), T0)
    tracked.observe(view("job-2", "FAIL", {"d2": "FAIL"}), T0)
    stats = TrackingStats()
    stats.count_published([c for c, _ in tracked.take_completions(T0)], T0, T0 + timedelta(seconds=45))
    assert dict(stats.completions_by_status) == {"succeeded": 1, "failed": 1}
    assert (stats.lag.count, stats.lag.sum_s) == (2, 90.0)


def test_a_lag_is_observed_in_the_bucket_of_its_seconds() -> None:
    lag = CompletionLag()
    lag.observe(45.0)
    buckets = dict(lag.buckets())
    assert (buckets["30"], buckets["60"], buckets["+Inf"]) == (0, 1, 1)


def test_a_lag_measured_on_a_clock_behind_the_starting_workers_counts_as_zero() -> None:
    lag = CompletionLag()
    lag.observe(-0.3)
    assert (lag.sum_s, dict(lag.buckets())["10"]) == (0.0, 1)


def test_the_units_held_are_the_size_of_the_trackers_collection_when_read() -> None:
    handling: set[object] = set()
    stats = TrackingStats(held=handling)
    handling.add(object())
    assert stats.units_held == 1
