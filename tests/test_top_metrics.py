"""What ``snapworker top`` reads from a worker's /metrics (the Prometheus text format)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from snapworker.settings import Settings
from snapworker.tools.top import parse_metrics, queue_names


def _exposition() -> str:
    registry = CollectorRegistry()
    requests = Counter("snapworker_requests", "", ["status"], registry=registry)
    requests.labels("accepted").inc(7)
    requests.labels("invalid").inc(3)
    fill = Histogram("snapworker_batch_fill_desktops", "", buckets=(1, 50, 100), registry=registry)
    fill.observe(100)
    fill.observe(50)
    Counter("snapworker_api_throttles", "", registry=registry).inc(4)
    Gauge("snapworker_limiter_rate_calls_per_second", "", registry=registry).set(1.25)
    Gauge("snapworker_limiter_max_rate_calls_per_second", "", registry=registry).set(5)
    Gauge("snapworker_requests_open", "", registry=registry).set(300)
    Gauge("snapworker_batches_in_flight", "", registry=registry).set(2)
    return generate_latest(registry).decode()


def test_requests_are_summed_over_statuses() -> None:
    assert parse_metrics(_exposition()).requests == 10


def test_calls_and_desktops_in_calls_come_from_the_batch_fill_histogram() -> None:
    metrics = parse_metrics(_exposition())
    assert (metrics.calls, metrics.desktops_in_calls) == (2, 150)


def test_throttles_and_the_current_rate_are_read() -> None:
    metrics = parse_metrics(_exposition())
    assert (metrics.throttles, metrics.rate) == (4, 1.25)


def test_the_requests_a_worker_holds_and_its_batches_in_flight_are_read() -> None:
    metrics = parse_metrics(_exposition())
    assert (metrics.held, metrics.in_flight) == (300, 2)


def test_the_rate_a_throttled_limiter_recovers_to_is_read() -> None:
    assert parse_metrics(_exposition()).max_rate == 5


def test_metrics_a_worker_does_not_expose_are_absent_not_zero() -> None:
    metrics = parse_metrics("")
    assert (metrics.rate, metrics.max_rate, metrics.consuming) == (None, None, None)


def test_partition_queues_are_shown_after_the_request_queue() -> None:
    settings = Settings.model_construct(
        request_queue="rq",
        result_queue="res",
        error_queue="err",
        dead_letter_queue="dl",
        partitions=2,
        track_jobs=False,
    )
    assert queue_names(settings) == ["rq", "rq.p000", "rq.p001", "res", "err", "dl"]


def test_an_unset_completion_queue_is_not_shown() -> None:
    settings = Settings.model_construct(
        request_queue="rq",
        result_queue="res",
        error_queue="err",
        dead_letter_queue="dl",
        partitions=0,
        track_jobs=True,
        tracking_queue="trk",
        completion_queue="",
    )
    assert queue_names(settings) == ["rq", "res", "err", "dl", "trk"]
