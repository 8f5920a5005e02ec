"""What one worker's tracker counted, for its metrics (read at scrape time by :mod:`snapworker.ops.metrics`).

The state of the units lives in RabbitMQ (see :mod:`snapworker.tracking.loop`), not in any worker, so these are
per-worker figures: what this worker did (job reads, completions published) and what it holds right now (the
tracking messages it is looking at). How many units the fleet tracks is the depth of the tracking and wait
queues, which RabbitMQ already shows.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence, Sized
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from snapworker.cloud.jobs import job_not_found
from snapworker.contract.models import SnapshotCompletion
from snapworker.domain.jobs import JobView
from snapworker.errors import ApiCredentialRefused, ApiError

__all__ = ["LAG_BUCKETS_S", "READ_OUTCOMES", "CompletionLag", "ReadOutcome", "TrackingStats", "read_outcome"]

ReadOutcome = Literal["running", "ended", "not_found", "refused", "error"]
#: every outcome of a job read, in the order the metrics list them
READ_OUTCOMES: tuple[ReadOutcome, ...] = ("running", "ended", "not_found", "refused", "error")

#: Upper bounds (seconds) of the lag histogram's buckets: the first look comes TRACK_FIRST_POLL_S (10 s) after the
#: result, jobs take minutes, and TRACK_DEADLINE_S (an hour) ends whatever still runs.
LAG_BUCKETS_S = (10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


def read_outcome(view: object) -> ReadOutcome | None:
    """What one job read told, as :meth:`~snapworker.tracking.loop.Tracker._look` takes it: the job ``running``
    or ``ended``; ``not_found`` (the API does not know it: its desktops end unknown); ``refused`` (the credential
    was refused: looked at again later); ``error`` (any other failure: looked at again later). None for what is
    not a read's outcome (a cancellation)."""
    if isinstance(view, JobView):
        return "running" if view.phase == "running" else "ended"
    if isinstance(view, ApiError) and job_not_found(view):
        return "not_found"
    if isinstance(view, ApiCredentialRefused):
        return "refused"
    return "error" if isinstance(view, Exception) else None


class CompletionLag:
    """A Prometheus histogram's figures (bucket counts, a sum and a count) of the lag, in seconds, from a tracked
    request's result to its completion confirmed by the broker."""

    def __init__(self) -> None:
        #: observations per bucket (not cumulative; the last counts those above every bound)
        self.counts = [0] * (len(LAG_BUCKETS_S) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        # the unit may have been started on another worker, whose clock may be a little ahead of this one
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(LAG_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as a Prometheus histogram has them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip(LAG_BUCKETS_S, self.counts, strict=False):
            running += n
            out.append((f"{bound:g}", running))
        out.append(("+Inf", self.count))
        return out


@dataclass
class TrackingStats:
    """Plain counters the tracker keeps; reading them never blocks. ``held``: the tracker's own collection of the
    tracking messages it is handling, whose size is read when scraped (no second copy to keep in step)."""

    held: Sized = ()
    #: units whose last completions this worker published: it acked their message and published no next one
    units_finished: int = 0
    #: job reads (one per job still running, per look) by :func:`read_outcome`
    reads_by_outcome: Counter[str] = field(default_factory=Counter)
    #: completions confirmed by the broker, by status (succeeded, failed, partial, unknown)
    completions_by_status: Counter[str] = field(default_factory=Counter)
    lag: CompletionLag = field(default_factory=CompletionLag)

    @property
    def units_held(self) -> int:
        """Tracking messages this worker holds now, unacked: being looked at (job reads, then the commit)."""
        return len(self.held)

    def count_reads(self, views: Sequence[object]) -> None:
        """Count the outcomes of one look's job reads (each a :class:`JobView` or the exception it raised)."""
        for view in views:
            if (outcome := read_outcome(view)) is not None:
                self.reads_by_outcome[outcome] += 1

    def count_published(self, completions: Iterable[SnapshotCompletion], started_at: datetime, now: datetime) -> None:
        """``completions``, of a unit started at ``started_at``, were confirmed by the broker at ``now``."""
        lag_s = (now - started_at).total_seconds()
        for completion in completions:
            self.completions_by_status[completion.status] += 1
            self.lag.observe(lag_s)
