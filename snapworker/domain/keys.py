"""The merge key: which requests may share one batch-create call."""

from __future__ import annotations

from dataclasses import dataclass

from snapworker.contract.models import DiskSnapshotInfo, SnapshotRequest

__all__ = ["MergeKey"]


@dataclass(frozen=True, slots=True)
class MergeKey:
    """Requests with equal keys may share a batch-create call: same project, same snapshot settings."""

    project_id: str
    disk_type: str | None
    system_disk_snapshot: DiskSnapshotInfo | None
    data_disk_snapshot: DiskSnapshotInfo | None

    @classmethod
    def of(cls, request: SnapshotRequest) -> MergeKey:
        return cls(request.project_id, request.disk_type, request.system_disk_snapshot, request.data_disk_snapshot)
