"""Prometheus metrics of a worker. Label sets are bounded: status, reason and status class, never IDs.

Most figures already live in the worker (its counters, the core's buffers, the limiter), so a collector reads
them at scrape time instead of every call site updating a second copy. Only what has no other home (API call
latency, retries, throttles) is recorded as it happens, through the client's observer hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from snapworker.ops.tracking_metrics import TrackerView, tracking_metrics

if TYPE_CHECKING:
    from snapworker.cloud.limiter import Limiter
    from snapworker.core import BatchingCore
    from snapworker.idempotency.health import StoreHealth
    from snapworker.ops.stats import WorkerStats

__all__ = ["ApiMetrics", "WorkerCollector", "WorkerView", "build_registry"]


class StoreView(Protocol):
    @property
    def health(self) -> StoreHealth: ...


class WorkerView(Protocol):
    """What the collector reads of a worker at scrape time: the worker passes itself, the metrics module never
    imports the runtime (the dependency points one way)."""

    @property
    def stats(self) -> WorkerStats: ...
    @property
    def core(self) -> BatchingCore: ...
    @property
    def limiter(self) -> Limiter | None: ...
    @property
    def idempotency(self) -> StoreView | None: ...
    @property
    def tracker(self) -> TrackerView | None: ...
    def ready(self) -> bool: ...


_FILL_BUCKETS = (1, 5, 10, 25, 50, 75, 90, 99, 100)


class ApiMetrics:
    """The API client's observer: call latency by status class, retries, throttles."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.call_seconds = Histogram(
            "snapworker_api_call_seconds",
            "Duration of batch-create calls by outcome class (2xx, 4xx, 5xx, timeout, transport).",
            ["status_class"],
            registry=registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.retries = Counter("snapworker_api_retries", "Batch-create tries after the first.", registry=registry)
        self.throttles = Counter(
            "snapworker_api_throttles", "Throttle answers (429 / APIG.0308) from the API.", registry=registry
        )

    def on_call(self, status_class: str, seconds: float) -> None:
        self.call_seconds.labels(status_class).observe(seconds)

    def on_retry(self) -> None:
        self.retries.inc()

    def on_throttle(self) -> None:
        self.throttles.inc()


class WorkerCollector(Collector):
    """Reads a worker's counters, buffers and limiter when scraped."""

    def __init__(self, worker: WorkerView) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        stats = self._worker.stats
        requests = CounterMetricFamily("snapworker_requests", "Requests answered, by result status.", labels=["status"])
        desktops = CounterMetricFamily("snapworker_desktops", "Desktops answered, by result status.", labels=["status"])
        for status in ("accepted", "partial", "failed", "invalid"):
            requests.add_metric([status], stats.requests_by_status[status])
            desktops.add_metric([status], stats.desktops_by_status[status])
        yield requests
        yield desktops
        batches = CounterMetricFamily("snapworker_batches", "Batches sent, by flush reason.", labels=["reason"])
        for reason in ("full", "linger", "pressure", "urgent", "shutdown"):
            batches.add_metric([reason], stats.batches_by_reason[reason])
        yield batches
        yield _fill_histogram(stats.batch_sizes)
        yield CounterMetricFamily(
            "snapworker_results_published", "Results confirmed by the broker.", value=stats.results_published
        )
        yield CounterMetricFamily(
            "snapworker_dead_lettered",
            "Request messages sent to the dead-letter queue (invalid, or settled by the guard).",
            value=stats.dead_lettered,
        )
        failures = CounterMetricFamily(
            "snapworker_delivery_failures",
            "Messages whose handling failed and that the last-resort guard answered or dead-lettered, by reason.",
            labels=["reason"],
        )
        for reason in ("internal", "unpublishable"):
            failures.add_metric([reason], stats.failures_by_reason[reason])
        yield failures
        yield CounterMetricFamily(
            "snapworker_results_truncated",
            "Results cut to fit the size limit (marked truncated: true).",
            value=stats.results_truncated,
        )
        core = self._worker.core
        yield GaugeMetricFamily(
            "snapworker_desktops_buffered", "Desktops in open batches.", value=core.buffered_desktops
        )
        yield GaugeMetricFamily(
            "snapworker_requests_open", "Requests held, awaiting results.", value=core.open_requests
        )
        yield GaugeMetricFamily(
            "snapworker_batches_in_flight",
            "Batches cut for a granted call, not yet answered.",
            value=core.batches_in_flight,
        )
        yield GaugeMetricFamily(
            "snapworker_prefetch_window", "Requests the broker lets this worker hold now.", value=core.window or 0
        )
        yield GaugeMetricFamily(
            "snapworker_merge_keys_active", "Merge keys with desktops pending or in flight.", value=core.active_keys
        )
        yield GaugeMetricFamily(
            "snapworker_urgent_requests_waiting",
            "Urgent requests held, awaiting results (served before the backlog, see docs/urgent.md).",
            value=core.urgent_waiting,
        )
        urgent = stats.urgent
        yield HistogramMetricFamily(
            "snapworker_urgent_request_seconds",
            "Urgent requests, from the worker holding one to its result confirmed by the broker.",
            buckets=urgent.buckets(),
            sum_value=urgent.sum_s,
        )
        yield GaugeMetricFamily("snapworker_consuming", "1 while the consumer is attached.", value=self._worker.ready())
        limiter = self._worker.limiter
        if limiter is not None:
            yield GaugeMetricFamily(
                "snapworker_limiter_rate_calls_per_second", "API calls per second allowed now.", value=limiter.rate
            )
            yield GaugeMetricFamily(
                "snapworker_limiter_max_rate_calls_per_second",
                "API calls per second allowed when not throttled (the rate recovers up to it).",
                value=limiter.max_rate,
            )
            yield CounterMetricFamily(
                "snapworker_limiter_wait_seconds",
                "Seconds API calls spent waiting for the rate limiter, summed.",
                value=limiter.wait_seconds_total,
            )
            yield GaugeMetricFamily("snapworker_limiter_queued", "Calls waiting for the limiter.", value=limiter.queued)
            yield GaugeMetricFamily(
                "snapworker_limiter_degraded",
                "1 while the fleet's shared budget (Redis) is unreachable and this worker uses its local share.",
                value=int(limiter.degraded),
            )
            yield CounterMetricFamily(
                "snapworker_limiter_fallbacks",
                "Times the shared budget (Redis) became unreachable and the local share took over.",
                value=limiter.fallbacks_total,
            )
        idem = self._worker.idempotency
        if idem is not None:
            yield from _idempotency_metrics(idem.health)
        tracker = self._worker.tracker
        if tracker is not None:  # TRACK_JOBS on, once the worker runs
            yield from tracking_metrics(tracker)


def _idempotency_metrics(health: StoreHealth) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "snapworker_idempotency_store_up",
        "1 while the idempotency store answers; 0: requests are held (requeued), none is sent blindly.",
        value=int(health.available),
    )
    yield CounterMetricFamily(
        "snapworker_idempotency_store_seconds",
        "Seconds spent waiting on idempotency store calls.",
        value=health.seconds,
    )
    yield CounterMetricFamily(
        "snapworker_idempotency_store_calls", "Idempotency store calls (lookups and writes).", value=health.calls
    )
    yield CounterMetricFamily(
        "snapworker_idempotency_store_failures", "Idempotency store calls that failed.", value=health.failures
    )
    yield CounterMetricFamily(
        "snapworker_idempotency_held",
        "Request messages requeued because the idempotency store could not be read.",
        value=health.held,
    )
    yield CounterMetricFamily(
        "snapworker_idempotency_from_record",
        "Requests answered from their idempotency record, without calling the API.",
        value=health.from_record,
    )
    reconciled = CounterMetricFamily(
        "snapworker_idempotency_reconciled",
        "Desktops checked against the API's snapshots after a call without a recorded outcome, by finding.",
        labels=["outcome"],
    )
    for outcome, count in health.reconciled.items():
        reconciled.add_metric([outcome], count)
    yield reconciled


def _fill_histogram(sizes: dict[int, int]) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    for bound in _FILL_BUCKETS:
        buckets.append((str(bound), sum(n for size, n in sizes.items() if size <= bound)))
    buckets.append(("+Inf", sum(sizes.values())))
    total = sum(size * n for size, n in sizes.items())
    return HistogramMetricFamily(
        "snapworker_batch_fill_desktops", "Desktops per batch sent (at most 100).", buckets=buckets, sum_value=total
    )


def build_registry(worker: WorkerView) -> tuple[CollectorRegistry, ApiMetrics]:
    """A registry with the worker's collector, the API metrics (pass them to the client), and the standard
    process (``process_*``: CPU, memory, open files), Python (``python_info``, ``python_gc_*``) and build
    (``snapworker_build_info{version}``) series."""
    import snapworker

    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("snapworker_build", "The snapworker version running.", registry=registry).info(
        {"version": snapworker.__version__}
    )
    return registry, ApiMetrics(registry)
