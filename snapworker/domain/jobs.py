"""Jobs: the one batch-create made, and what one read of a job told, as the tracking decides with it: plain
values, no I/O.

:mod:`snapworker.cloud.jobs` makes them from the API's documents; :mod:`snapworker.tracking.state` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CreatedJob", "JobView", "Phase", "SubJobView", "classify"]

_SUCCEEDED = frozenset({"SUCCESS", "COMPLETE"})
_FAILED = frozenset({"FAIL", "FAILED"})

Phase = Literal["succeeded", "failed", "running"]


@dataclass(frozen=True, slots=True)
class CreatedJob:
    """A job batch-create made, and the ``X-Request-Id`` of the answer that named it."""

    job_id: str
    api_request_id: str | None


def classify(status: object) -> Phase:
    """A job or sub-job status as the tracking reads it; anything unknown is still running."""
    text = status.upper() if isinstance(status, str) else ""
    if text in _SUCCEEDED:
        return "succeeded"
    return "failed" if text in _FAILED else "running"


@dataclass(frozen=True, slots=True)
class SubJobView:
    desktop_id: str
    status: str | None
    error_code: str | None
    fail_reason: str | None


@dataclass(frozen=True, slots=True)
class JobView:
    """What one read of a job told. ``sub_jobs`` by desktop ID; ``complete``: every sub-job is in it."""

    job_id: str
    status: str | None
    end_time: str | None
    error_code: str | None
    fail_reason: str | None
    sub_jobs: dict[str, SubJobView]
    complete: bool

    @property
    def phase(self) -> Phase:
        return classify(self.status)
