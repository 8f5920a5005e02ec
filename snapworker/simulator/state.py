"""The simulator's gateway-side state, free of HTTP: configuration, statistics and flow control.

Everything here is synchronous and takes the time as an argument (``time.monotonic()`` seconds), so the
aiohttp layer in :mod:`snapworker.simulator.app` stays thin and the state is cheap to test.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FlowLimiter", "SimConfig", "SimStats", "Throttled", "retry_after_header"]


@dataclass
class SimConfig:
    """How the fake Workspace API behaves. Mutable: the simulator reads it on every request.

    The defaults accept nothing but the given credentials and inject no faults, throttling or latency.
    ``seed`` is read once, when the :class:`~snapworker.simulator.app.Simulator` is built.
    """

    tokens: frozenset[str] = frozenset()
    """Accepted ``X-Auth-Token`` values."""
    credentials: dict[str, str] = field(default_factory=dict)
    """AK -> SK pairs accepted for SDK-HMAC-SHA256 signatures."""
    allow_anonymous: bool = False
    """Accept requests that carry no credentials at all (bad credentials are still refused)."""
    rate_per_minute: int | None = None
    """Batch-create calls one user (token or AK) may make in any 60 s window; None = unlimited."""
    rate_per_second: int | None = None
    """Batch-create calls one user may make in any 1 s window; None = unlimited."""
    send_retry_after: bool = False
    """Add ``Retry-After`` to 429 answers (Huawei's gateway usually does not)."""
    error_5xx_ratio: float = 0.0
    """Share of authenticated, admitted batch-create calls answered 500 WKS.0005, 502 or 503 (no job)."""
    html_error_ratio: float = 0.0
    """Share of those calls answered 502 with a text/html gateway page (no job)."""
    latency_s: float = 0.0
    """Delay before every API answer. Jobs are created before it, as a slow real API would."""
    # -- chaos faults (bench/soak.py): random, from the ``seed``'s generator, off by default
    error_429_ratio: float = 0.0
    """Share of admitted batch-create calls refused 429 APIG.0308 anyway, as an overloaded gateway would."""
    latency_jitter_s: float = 0.0
    """A random extra delay, uniform in [0, this), before every API answer (after ``latency_s``)."""
    stall_ratio: float = 0.0
    """Share of batch-create calls whose answer is held ``stall_s`` more (after the job is created): with
    ``stall_s`` over the client's read timeout, a response timeout whose job may exist."""
    stall_s: float = 0.0
    drop_after_create_ratio: float = 0.0
    """Share of batch-create calls that create their job (and its snapshots) and then close the connection
    without any answer: the client sees the connection drop after its request was sent. Drawn only among calls
    that would have created a job; counted in ``dropped_answers`` and, as the service's decision, in
    ``calls_by_status`` as 200."""
    unknown_desktops: frozenset[str] = frozenset()
    """A batch containing one is refused 404 WKS.0202, naming the first one (see ``name_culprits``)."""
    busy_desktops: frozenset[str] = frozenset()
    """A batch containing one is refused 409 WKS.0110, naming the first one (see ``name_culprits``)."""
    busy_for_s: float | None = None
    """How long a busy desktop stays busy after its first 409; None = for ever."""
    name_culprits: bool = True
    """404/409 answers name the desktop at fault (in ``error_msg`` and ``error_detail``); False: they do not."""
    failing_desktops: frozenset[str] = frozenset()
    """Accepted, but their sub-jobs (and so the job) end FAIL."""
    job_duration_s: float = 0.0
    """Jobs stay RUNNING this long, then end SUCCESS or FAIL (``math.inf``: a job that never ends)."""
    sub_jobs_inline: int | None = None
    """Sub-jobs a job's GET lists (the rest: ``GET workspace-sub-jobs`` pages); None = all of them."""
    seed: int = 0
    max_jobs: int = 100_000
    """Jobs kept for GET; the oldest are forgotten past this (then 404, like an expired job)."""


# --------------------------------------------------------------------------------------------------- stats


def _busiest(window: deque[float], at: float, span_s: float) -> int:
    """Add an event at ``at`` to a sliding window of ``span_s`` seconds; the events inside it, which ends at the
    newest event. Kept sorted: an event may be recorded a moment after a later one (the body was read meanwhile)."""
    if not window or at >= window[-1]:
        window.append(at)
    else:
        bisect.insort(window, at)
    newest = window[-1]
    while window[0] <= newest - span_s:
        window.popleft()
    return len(window)


#: Statuses of calls the gateway refused before the service saw them: authentication and flow control.
_NOT_ADMITTED = frozenset({401, 429})


class SimStats:
    """Counters over batch-create calls and reads. Memory: O(distinct desktops + calls in the last minute)."""

    def __init__(self) -> None:
        self.calls_total = 0
        self.jobs_created = 0
        self.job_queries = 0
        self.sub_job_queries = 0
        self.snapshot_queries = 0
        self.dropped_answers = 0  # batch-create calls whose job was created but whose answer was never sent
        self.max_reads_in_one_second = 0
        self.calls_by_status: Counter[int] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.desktops: set[str] = set()
        self.desktops_repeated: set[str] = set()  # in more than one job: snapshotted again
        self.repeated_snapshots = 0  # desktop snapshots beyond each desktop's first
        self.max_calls_in_one_second = 0
        self.max_arrivals_in_any_60_s = 0
        self.max_calls_in_any_60_s = 0
        self._last_second: deque[float] = deque()
        self._reads_last_second: deque[float] = deque()
        self._arrivals_last_minute: deque[float] = deque()
        self._admitted_last_minute: deque[float] = deque()

    def record_arrival(self, now: float) -> None:
        """A batch-create call arrived (before any check). Tracks the busiest sliding 1 s and 60 s windows."""
        self.calls_total += 1
        self.max_calls_in_one_second = max(self.max_calls_in_one_second, _busiest(self._last_second, now, 1.0))
        in_minute = _busiest(self._arrivals_last_minute, now, 60.0)
        self.max_arrivals_in_any_60_s = max(self.max_arrivals_in_any_60_s, in_minute)

    def record_read(self, now: float) -> None:
        """A read GET arrived (a job, a sub-jobs page or a snapshot listing; before any check). Tracks the
        busiest sliding 1 s window of reads."""
        in_second = _busiest(self._reads_last_second, now, 1.0)
        self.max_reads_in_one_second = max(self.max_reads_in_one_second, in_second)

    def record_status(self, status: int, now: float | None = None) -> None:
        """The answer to a call that arrived at ``now`` (its :meth:`record_arrival` time; default: the present).

        Calls past authentication and flow control (any status but 401 and 429) are *admitted*: the busiest
        sliding 60 s window of their arrivals is ``max_calls_in_any_60_s``, what the per-minute limit counts.
        """
        self.calls_by_status[status] += 1
        if status not in _NOT_ADMITTED:
            at = time.monotonic() if now is None else now
            in_minute = _busiest(self._admitted_last_minute, at, 60.0)
            self.max_calls_in_any_60_s = max(self.max_calls_in_any_60_s, in_minute)

    def record_job(self, desktop_ids: tuple[str, ...]) -> list[str]:
        """Count a created job; the desktops it snapshots again (each was in an earlier job)."""
        self.jobs_created += 1
        self.batch_sizes[len(desktop_ids)] += 1
        again = []
        for desktop_id in desktop_ids:
            if desktop_id in self.desktops:
                self.desktops_repeated.add(desktop_id)
                self.repeated_snapshots += 1
                again.append(desktop_id)
            else:
                self.desktops.add(desktop_id)
        return again

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /_sim/stats`` document (JSON object keys are strings)."""
        return {
            "calls_total": self.calls_total,
            "calls_by_status": {str(k): v for k, v in sorted(self.calls_by_status.items())},
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "distinct_desktops": len(self.desktops),
            "desktops_repeated": len(self.desktops_repeated),
            "repeated_snapshots": self.repeated_snapshots,
            "max_calls_in_one_second": self.max_calls_in_one_second,
            "max_calls_in_any_60_s": self.max_calls_in_any_60_s,
            "max_arrivals_in_any_60_s": self.max_arrivals_in_any_60_s,
            "jobs_created": self.jobs_created,
            "job_queries": self.job_queries,
            "sub_job_queries": self.sub_job_queries,
            "snapshot_queries": self.snapshot_queries,
            "max_reads_in_one_second": self.max_reads_in_one_second,
            "dropped_answers": self.dropped_answers,
        }


# --------------------------------------------------------------------------------------------------- flow control


@dataclass(frozen=True, slots=True)
class Throttled:
    """A call refused by flow control: ``limit`` calls per ``period`` ("minute"/"second")."""

    limit: int
    period: str
    retry_after_s: float


class FlowLimiter:
    """Per-user sliding-window limits, strict: at most N admitted calls in *any* window of the period.

    Refused calls do not count. Memory: at most ``limit`` timestamps per user and period.
    """

    def __init__(self) -> None:
        self._minute: dict[str, deque[float]] = {}
        self._second: dict[str, deque[float]] = {}

    @staticmethod
    def _full(log: deque[float], limit: int, window_s: float, now: float) -> float | None:
        while log and log[0] <= now - window_s:
            log.popleft()
        if len(log) < limit:
            return None
        if limit <= 0:
            return window_s  # a zero limit refuses everything
        # Seconds until enough of the oldest calls leave the window for one more call.
        return log[len(log) - limit] + window_s - now

    def admit(self, user: str, now: float, per_minute: int | None, per_second: int | None) -> Throttled | None:
        """Admit (and count) one call of ``user`` at ``now``, or say which limit refuses it."""
        minute = self._minute.setdefault(user, deque()) if per_minute is not None else None
        second = self._second.setdefault(user, deque()) if per_second is not None else None
        if second is not None and per_second is not None:
            wait = self._full(second, per_second, 1.0, now)
            if wait is not None:
                return Throttled(per_second, "second", wait)
        if minute is not None and per_minute is not None:
            wait = self._full(minute, per_minute, 60.0, now)
            if wait is not None:
                return Throttled(per_minute, "minute", wait)
        if minute is not None:
            minute.append(now)
        if second is not None:
            second.append(now)
        return None


def retry_after_header(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
