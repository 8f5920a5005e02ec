"""The progress line: what the worker did in the last interval, at INFO, only while busy; one line per problem."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from snapworker.cloud.limiter import RateLimiter
from snapworker.contract.models import ResultError, SnapshotResult
from snapworker.core import BatchingCore
from snapworker.ops.progress import ProgressReporter, log_problem_result
from snapworker.ops.stats import WorkerStats


def _result(status: str, *errors: ResultError) -> SnapshotResult:
    return SnapshotResult(
        request_id="r-7",
        project_id="p1",
        status=status,
        finished_at=datetime.now(UTC),
        errors=errors,
    )


def _error(code: str, desktops: tuple[str, ...] = ("d1",)) -> ResultError:
    return ResultError(desktop_ids=desktops, http_status=404, error_code=code, error_msg="gone", retryable=False)


@pytest.fixture
def reporter_parts() -> tuple[WorkerStats, BatchingCore, RateLimiter]:
    return WorkerStats(), BatchingCore(100, 0.25, window=1000), RateLimiter(1.5, 5, 8)


def test_an_idle_worker_writes_no_progress_line(
    reporter_parts: tuple[WorkerStats, BatchingCore, RateLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    stats, core, limiter = reporter_parts
    reporter = ProgressReporter(stats, core, lambda: limiter, interval_s=30)
    with caplog.at_level(logging.INFO, logger="snapworker.progress"):
        assert reporter.report() is None
    assert caplog.records == []


def test_the_progress_line_counts_the_interval_only(
    reporter_parts: tuple[WorkerStats, BatchingCore, RateLimiter],
) -> None:
    stats, core, limiter = reporter_parts
    reporter = ProgressReporter(stats, core, lambda: limiter, interval_s=30)
    stats.requests_received = 5
    stats.count_result(_result("accepted"))
    reporter.take()
    stats.requests_received = 12
    stats.count_result(_result("failed", _error("WKS.0202")))
    stats.batch_sizes[50] += 2
    progress = reporter.take()
    assert (progress.requests_in, progress.answered, progress.calls, progress.desktops_sent) == (7, 1, 2, 100)
    assert progress.by_status["failed"] == 1
    assert progress.by_status["accepted"] == 0


def test_the_progress_line_reads_as_text_and_carries_its_figures_as_a_field(
    reporter_parts: tuple[WorkerStats, BatchingCore, RateLimiter], caplog: pytest.LogCaptureFixture
) -> None:
    stats, core, limiter = reporter_parts
    reporter = ProgressReporter(stats, core, lambda: limiter, interval_s=30)
    stats.requests_received = 3
    stats.count_result(_result("accepted"))
    stats.batch_sizes[80] += 1
    with caplog.at_level(logging.INFO, logger="snapworker.progress"):
        reporter.report()
    [record] = caplog.records
    text = record.getMessage()
    assert "3 requests in, 1 answered (1 accepted)" in text
    assert "1 API call, 80.0 desktops per call (0.013 calls per desktop)" in text
    assert "rate 1.50 of 1.50 calls/s" in text
    assert record.progress["requests_in"] == 3  # type: ignore[attr-defined]


def test_a_failed_request_gets_one_line_with_its_request_id_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="snapworker.progress"):
        log_problem_result(_result("failed", _error("WKS.0202", ("d1", "d2")), _error("WKS.0001")))
    [record] = caplog.records
    assert record.getMessage() == "request r-7 failed: 3 desktops without a job, WKS.0202: gone (and 1 more error)"
    assert record.request_id == "r-7"  # type: ignore[attr-defined]


def test_an_accepted_request_writes_no_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="snapworker.progress"):
        log_problem_result(_result("accepted"))
    assert caplog.records == []


async def test_a_throttle_episode_is_one_warning_with_the_new_rate(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    limiter = RateLimiter(2.0, 5, 8, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="snapworker.limiter"):
        limiter.on_throttle(3.0, sent_at=99.0)
        limiter.on_throttle(3.0, sent_at=99.5)  # granted before the cut: the same overload
    [record] = caplog.records
    assert "rate cut to 1.00 calls/s (of 2.00), every call paused 3.0 s" in record.getMessage()
