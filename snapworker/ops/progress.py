"""The worker's progress line: what it did in the last PROGRESS_INTERVAL_S, one INFO line, only while busy.

A person reading the log at INFO should see the worker work without scraping metrics: requests in and answered,
API calls, how full the calls were (the economy the worker exists for), throttles, the rate allowed now and what
it holds. The same figures travel as the record's ``progress`` field, so the JSON format carries them as data.
An idle worker (nothing in, nothing answered, nothing held) writes nothing.

:func:`log_problem_result` is the other half: one INFO line per request that was not ``accepted`` (invalid,
failed or partial), with its request_id and the reason, so a failed request can be found by its ID.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

from snapworker.cloud.limiter import Limiter
from snapworker.contract.models import SnapshotResult
from snapworker.core import BatchingCore
from snapworker.ops.stats import WorkerStats
from snapworker.words import plural

__all__ = ["Progress", "ProgressReporter", "log_problem_result"]

log = logging.getLogger("snapworker.progress")

_STATUSES = ("accepted", "partial", "failed", "invalid")
_REASON_MAX_CHARS = 300  # a validation message can be long: the result carries all of it


def log_problem_result(result: SnapshotResult) -> None:
    """One INFO line for a result that is not ``accepted``: request_id, status, desktops left out and why."""
    if result.status == "accepted" or not result.errors:
        return
    first = result.errors[0]
    reason = f"{first.error_code}: {first.error_msg}"
    if len(reason) > _REASON_MAX_CHARS:
        reason = reason[: _REASON_MAX_CHARS - 1] + "…"
    others = len(result.errors) - 1
    log.info(
        "request %s %s: %s without a job, %s%s",
        result.request_id,
        result.status,
        plural(sum(len(e.desktop_ids) for e in result.errors), "desktop"),
        reason,
        f" (and {others} more error{'s' * (others > 1)})" if others else "",
        extra={
            "request_id": result.request_id,
            "project_id": result.project_id,
            "status": result.status,
            "error_code": first.error_code,
            "http_status": first.http_status,
        },
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts of one interval (``*_in``, ``answered``, ``calls``, ...) and the state at its end."""

    interval_s: float
    requests_in: int
    answered: int
    by_status: dict[str, int]
    calls: int
    desktops_sent: int
    throttles: int
    rate: float | None
    max_rate: float | None
    requests_held: int
    desktops_held: int
    batches_in_flight: int

    @property
    def busy(self) -> bool:
        return bool(self.requests_in or self.answered or self.calls or self.requests_held)

    def line(self) -> str:
        """The human-readable line (the JSON format carries :meth:`fields` beside it)."""
        statuses = ", ".join(f"{n} {s}" for s, n in self.by_status.items() if n)
        parts = [
            f"{plural(self.requests_in, 'request')} in, {self.answered} answered"
            + (f" ({statuses})" if statuses else "")
        ]
        if self.calls:
            fill = self.desktops_sent / self.calls
            parts.append(
                f"{plural(self.calls, 'API call')}, {fill:.1f} desktops per call ({1 / fill:.3f} calls per desktop)"
            )
        else:
            parts.append("no API calls")
        if self.throttles:
            parts.append(f"{self.throttles} throttled")
        if self.rate is not None and self.max_rate is not None:
            parts.append(f"rate {self.rate:.2f} of {self.max_rate:.2f} calls/s")
        parts.append(
            f"holding {plural(self.requests_held, 'request')} ({plural(self.desktops_held, 'desktop')} waiting, "
            f"{plural(self.batches_in_flight, 'call')} in flight)"
        )
        return f"progress, last {self.interval_s:.0f} s: " + "; ".join(parts)

    def fields(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Totals:
    received: int
    by_status: dict[str, int]
    calls: int
    desktops_sent: int
    throttles: int


class ProgressReporter:
    """Every ``interval_s``, logs the :class:`Progress` of the interval if the worker was busy.

    ``limiter`` is read at each report (the worker builds its limiter when it runs).
    """

    def __init__(
        self,
        stats: WorkerStats,
        core: BatchingCore,
        limiter: Callable[[], Limiter | None],
        *,
        interval_s: float,
    ) -> None:
        self._stats = stats
        self._core = core
        self._limiter = limiter
        self._interval_s = interval_s
        self._last = self._totals()

    def _totals(self) -> _Totals:
        limiter = self._limiter()
        return _Totals(
            received=self._stats.requests_received,
            by_status={s: self._stats.requests_by_status[s] for s in _STATUSES},
            calls=self._stats.batches_sent,
            desktops_sent=self._stats.desktops_sent,
            throttles=limiter.throttles_total if limiter is not None else 0,
        )

    def take(self) -> Progress:
        """The progress since the previous :meth:`take` (or since construction)."""
        now, last = self._totals(), self._last
        self._last = now
        limiter = self._limiter()
        by_status = {s: now.by_status[s] - last.by_status[s] for s in _STATUSES}
        return Progress(
            interval_s=self._interval_s,
            requests_in=now.received - last.received,
            answered=sum(by_status.values()),
            by_status=by_status,
            calls=now.calls - last.calls,
            desktops_sent=now.desktops_sent - last.desktops_sent,
            throttles=now.throttles - last.throttles,
            rate=round(limiter.rate, 4) if limiter is not None else None,
            max_rate=limiter.max_rate if limiter is not None else None,
            requests_held=self._core.open_requests,
            desktops_held=self._core.buffered_desktops,
            batches_in_flight=self._core.batches_in_flight,
        )

    def report(self) -> Progress | None:
        """Log the interval's progress if busy; return it (None when idle)."""
        progress = self.take()
        if not progress.busy:
            return None
        log.info("%s", progress.line(), extra={"progress": progress.fields()})
        return progress

    async def run(self) -> None:
        """Report every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            self.report()
