"""The simulator's service-side state, free of HTTP: batch-create body validation and jobs.

Job status is derived from the time it is asked about (``time.monotonic()`` seconds, passed in), so no timer
runs per job.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

__all__ = [
    "DISK_TYPES",
    "MAX_DESKTOPS_PER_BATCH",
    "InvalidBody",
    "Job",
    "JobStore",
    "desktop_name",
    "parse_batch_create",
]

MAX_DESKTOPS_PER_BATCH: Final = 100
MAX_DESKTOP_ID_LEN: Final = 36
MAX_SNAPSHOT_NAME_LEN: Final = 64
MAX_SNAPSHOT_DESCRIPTION_LEN: Final = 255
DISK_TYPES: Final = frozenset({"SYSTEM_DISK", "DATA_DISKS", "ALL"})


# --------------------------------------------------------------------------------------------------- jobs


#: The job type of a batch-create job and of its sub-jobs (Huawei's value is not documented: an imitation).
JOB_TYPE: Final = "BATCH_CREATE_SNAPSHOTS"


def _huawei_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def desktop_name(desktop_id: str) -> str:
    """The name the simulator gives a desktop (jobs' entities and snapshots alike)."""
    return f"desktop-{desktop_id[:8]}"


@dataclass(slots=True)
class Job:
    """One batch-create job: one sub-job per desktop; its status is derived from the time asked."""

    id: str
    project_id: str
    desktop_ids: tuple[str, ...]
    failing: frozenset[str]
    created_at: float
    """Monotonic seconds."""
    begin_time: datetime
    """Wall clock, UTC."""
    duration_s: float

    def done(self, now: float) -> bool:
        """Whether the job has ended at monotonic time ``now``."""
        return now - self.created_at >= self.duration_s

    def progress(self, now: float) -> int:
        """Percent done at ``now``: 100 once ended, else the share of ``duration_s`` elapsed (at most 99)."""
        if self.done(now):
            return 100
        return min(99, int(100 * (now - self.created_at) / self.duration_s))

    def to_dict(self, now: float, *, inline: int | None = None) -> dict[str, Any]:
        """The ``GET /v2/{project_id}/workspace-jobs/{job_id}`` document at monotonic time ``now`` (the SDK's
        ``ShowJobResponse``); ``inline``: how many sub-jobs it lists (None: all; ``sub_jobs_total`` always counts
        all)."""
        done = self.done(now)
        failed_job = done and not self.failing.isdisjoint(self.desktop_ids)
        return {
            "id": self.id,
            "job_type": JOB_TYPE,
            "begin_time": _huawei_time(self.begin_time),
            "end_time": self._end_time(done),
            "status": ("FAIL" if failed_job else "SUCCESS") if done else "RUNNING",
            "job_error_code": "WKS.0005" if failed_job else None,
            "fail_reason": "Some snapshots failed to be created." if failed_job else None,
            "sub_jobs_total": len(self.desktop_ids),
            "sub_jobs": self.sub_jobs(now, 0, inline),
        }

    def _end_time(self, done: bool) -> str | None:
        return _huawei_time(self.begin_time + timedelta(seconds=self.duration_s)) if done else None

    def sub_jobs(self, now: float, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The sub-jobs from ``offset`` (at most ``limit``), one per desktop, as the job lists them: each the
        SDK's ``JobDetailInfo`` (``job_id`` is the parent job's id, ``process`` an int percent)."""
        done = self.done(now)
        job_uuid = uuid.UUID(self.id)
        begin_time, end_time, process = _huawei_time(self.begin_time), self._end_time(done), self.progress(now)
        end = len(self.desktop_ids) if limit is None else offset + limit
        sub_jobs = []
        for desktop_id in self.desktop_ids[offset:end]:
            failed = done and desktop_id in self.failing
            sub_jobs.append(
                {
                    "id": str(uuid.uuid5(job_uuid, desktop_id)),
                    "job_type": JOB_TYPE,
                    "entities": {"desktop_id": desktop_id, "desktop_name": desktop_name(desktop_id)},
                    "begin_time": begin_time,
                    "end_time": end_time,
                    "status": ("FAIL" if failed else "SUCCESS") if done else "RUNNING",
                    "error_code": "WKS.0005" if failed else None,
                    "fail_reason": f"Failed to create the snapshot of desktop {desktop_id}." if failed else None,
                    "project_id": self.project_id,
                    "job_id": self.id,
                    "process": process,
                }
            )
        return sub_jobs


class JobStore:
    """Jobs by id, the oldest dropped past ``max_jobs``. Desktop IDs are interned: 20k jobs over 200k
    desktops then cost pointers, not 2M string copies."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def create(
        self,
        project_id: str,
        desktop_ids: tuple[str, ...],
        *,
        failing: frozenset[str],
        now: float,
        wall_now: datetime,
        duration_s: float,
        max_jobs: int,
    ) -> Job:
        interned = tuple(sys.intern(d) for d in desktop_ids)
        job = Job(
            id=str(uuid.uuid4()),
            project_id=project_id,
            desktop_ids=interned,
            failing=failing.intersection(interned) if failing else frozenset(),
            created_at=now,
            begin_time=wall_now,
            duration_s=duration_s,
        )
        self._jobs[job.id] = job
        while len(self._jobs) > max(max_jobs, 1):
            del self._jobs[next(iter(self._jobs))]  # dicts keep insertion order: this is the oldest
        return job

    def get(self, project_id: str, job_id: str) -> Job | None:
        """The job, or None if unknown, forgotten, or of another project."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.project_id == project_id else None

    def by_id(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def __len__(self) -> int:
        return len(self._jobs)


# --------------------------------------------------------------------------------------------------- validation


class InvalidBody(ValueError):
    """A batch-create body the real API refuses with 400 WKS.0001. ``field`` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _check_snapshot_info(body: dict[str, Any], key: str) -> None:
    info = body.get(key)
    if info is None:
        return
    if not isinstance(info, dict):
        raise InvalidBody(f"{key} must be an object", key)
    for name, limit in (("name", MAX_SNAPSHOT_NAME_LEN), ("description", MAX_SNAPSHOT_DESCRIPTION_LEN)):
        value = info.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise InvalidBody(f"{key}.{name} must be a string of at most {limit} characters", f"{key}.{name}")


def parse_batch_create(raw: bytes) -> tuple[str, ...]:
    """Validate a batch-create body as the real API does; return its desktop IDs, repeats dropped.

    Unknown fields are ignored (Huawei's services ignore them); a null field counts as absent.
    Raises :class:`InvalidBody`.
    """
    if not raw.strip():
        raise InvalidBody("The request message input by the interface is empty.", "body")
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidBody("The request body is not valid JSON.", "body") from None
    if not isinstance(body, dict):
        raise InvalidBody("The request body must be a JSON object.", "body")
    ids = body.get("desktop_ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_DESKTOPS_PER_BATCH:
        raise InvalidBody(f"desktop_ids must be an array of 1 to {MAX_DESKTOPS_PER_BATCH} IDs", "desktop_ids")
    for desktop_id in ids:
        if not isinstance(desktop_id, str) or not 1 <= len(desktop_id) <= MAX_DESKTOP_ID_LEN:
            raise InvalidBody(
                f"each desktop ID must be a string of 1 to {MAX_DESKTOP_ID_LEN} characters", "desktop_ids"
            )
    disk_type = body.get("disk_type")
    if disk_type is not None and (not isinstance(disk_type, str) or disk_type not in DISK_TYPES):
        raise InvalidBody("disk_type must be SYSTEM_DISK, DATA_DISKS or ALL", "disk_type")
    _check_snapshot_info(body, "system_disk_snapshot")
    _check_snapshot_info(body, "data_disk_snapshot")
    return tuple(dict.fromkeys(ids))
