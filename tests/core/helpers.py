"""Small builders for core tests."""

from __future__ import annotations

from snapworker.contract.models import DiskSnapshotInfo, JobEntry, ResultError, SnapshotRequest
from snapworker.core import Batch, BatchingCore, Outcome


def request(
    project: str = "p1", *desktops: str, disk_type: str | None = None, name: str | None = None
) -> SnapshotRequest:
    snapshot = DiskSnapshotInfo(name=name) if name is not None else None
    return SnapshotRequest.model_validate(
        {
            "project_id": project,
            "desktop_ids": list(desktops or ("d1",)),
            "disk_type": disk_type,
            "system_disk_snapshot": snapshot,
        }
    )


def job_for(batch: Batch, job_id: str | None = None) -> Outcome:
    return (JobEntry(job_id=job_id or f"job-{batch.id}", desktop_ids=batch.desktop_ids),)


def error_for(batch: Batch, code: str = "WKS.0005", status: int = 500, retryable: bool = True) -> Outcome:
    return (
        ResultError(
            desktop_ids=batch.desktop_ids,
            http_status=status,
            error_code=code,
            error_msg="boom",
            retryable=retryable,
        ),
    )


#: the linger every core test uses (seconds)
LINGER = 0.25

#: a time by which every linger and hold has run out
LATER = 1e6


def take_all(core: BatchingCore, now: float = LATER) -> list[Batch]:
    """Every batch a run of granted calls would carry at ``now`` (as if the limiter had calls to spare)."""
    batches: list[Batch] = []
    while core.sendable(now):
        batch = core.take(now)
        assert batch is not None, "sendable, yet a granted call carried nothing"
        batches.append(batch)
    return batches
