"""Counters of what a worker did, for the demo summary, the benchmark and the metrics endpoint."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from snapworker.contract.models import SnapshotResult
from snapworker.core import Batch, FlushReason
from snapworker.ops.urgent_latency import UrgentLatency

__all__ = ["WorkerStats"]


@dataclass
class WorkerStats:
    """Plain counters; reading them never blocks and costs nothing."""

    #: request messages taken from the queue (a redelivered one counts again)
    requests_received: int = 0
    requests_by_status: Counter[str] = field(default_factory=Counter)
    desktops_by_status: Counter[str] = field(default_factory=Counter)
    batches_by_reason: Counter[FlushReason] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    results_published: int = 0
    dead_lettered: int = 0
    #: messages the last-resort guard settled (see guard.py), by reason: "internal" or "unpublishable"
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    results_truncated: int = 0
    #: urgent requests timed from arrival to their result confirmed (snapworker_urgent_request_seconds)
    urgent: UrgentLatency = field(default_factory=UrgentLatency)

    def count_batch(self, batch: Batch) -> None:
        self.batches_by_reason[batch.reason] += 1
        self.batch_sizes[len(batch.desktop_ids)] += 1

    def count_result(self, result: SnapshotResult) -> None:
        self.requests_by_status[result.status] += 1
        desktops = sum(len(j.desktop_ids) for j in result.jobs) + sum(len(e.desktop_ids) for e in result.errors)
        self.desktops_by_status[result.status] += desktops

    def as_dict(self) -> dict[str, object]:
        """The counters as plain JSON-ready data."""
        return {
            "requests_received": self.requests_received,
            "requests_by_status": dict(self.requests_by_status),
            "desktops_by_status": dict(self.desktops_by_status),
            "batches_by_reason": dict(self.batches_by_reason),
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "batches_sent": self.batches_sent,
            "desktops_sent": self.desktops_sent,
            "results_published": self.results_published,
            "dead_lettered": self.dead_lettered,
            "failures_by_reason": dict(self.failures_by_reason),
            "results_truncated": self.results_truncated,
        }

    @property
    def batches_sent(self) -> int:
        return sum(self.batch_sizes.values())

    @property
    def desktops_sent(self) -> int:
        return sum(size * n for size, n in self.batch_sizes.items())
