"""The simulator's snapshots: one per desktop of every job it created, listed by ``GET /v2/{project_id}/snapshots``.

Consistent with the jobs by construction: a snapshot is made with its job (in the same handler, before the
answer), and its status is read from the job at the time asked: ``creating`` while the job runs, then
``create_success``, or ``create_failed`` for a desktop the job fails. Names follow Huawei's rule (desktop name +
given name + timestamp), so ``snapshot_name`` filters by substring, as the real listing is understood to.

Also the ground truth of the crash tests: :meth:`SnapshotIndex.repeated` counts desktops snapshotted more than
once. Bounded: past ``max_snapshots`` the oldest are forgotten.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from snapworker.simulator.service import Job

__all__ = ["SnapshotIndex"]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    id: str
    job: Job
    desktop_id: str
    name: str
    disk_type: str
    description: str

    def to_dict(self, now: float) -> dict[str, Any]:
        job = self.job
        if now - job.created_at < job.duration_s:
            status = "creating"
        else:
            status = "create_failed" if self.desktop_id in job.failing else "create_success"
        return {
            "snapshot_id": self.id,
            "snapshot_name": self.name,
            "desktop_id": self.desktop_id,
            "desktop_name": f"desktop-{self.desktop_id[:8]}",
            "disk_type": self.disk_type,
            "status": status,
            "description": self.description,
            "create_time": job.begin_time.strftime("%Y-%m-%dT%H:%M:%S.") + f"{job.begin_time.microsecond // 1000:03d}Z",
        }


class SnapshotIndex:
    """Snapshots by (project, desktop), in creation order."""

    def __init__(self, max_snapshots: int = 500_000) -> None:
        self._by_desktop: dict[tuple[str, str], list[_Snapshot]] = {}
        self._order: deque[tuple[str, str]] = deque()
        self._max = max_snapshots

    def record(self, job: Job, body: bytes) -> None:
        """The snapshots of a job just created from the batch-create ``body`` (already validated)."""
        fields = json.loads(body)
        info = fields.get("system_disk_snapshot") or fields.get("data_disk_snapshot") or {}
        given = info.get("name") or ""
        stamp = job.begin_time.strftime("%Y%m%d%H%M%S")
        disk_type = fields.get("disk_type") or "SYSTEM_DISK"
        for desktop_id in job.desktop_ids:
            name = "-".join(part for part in (f"desktop-{desktop_id[:8]}", given, stamp) if part)
            snapshot = _Snapshot(str(uuid.uuid4()), job, desktop_id, name, disk_type, info.get("description") or "")
            where = (job.project_id, desktop_id)
            self._by_desktop.setdefault(where, []).append(snapshot)
            self._order.append(where)
        while len(self._order) > self._max:
            oldest = self._order.popleft()
            kept = self._by_desktop[oldest]
            kept.pop(0)
            if not kept:
                del self._by_desktop[oldest]

    def listing(self, project_id: str, query: dict[str, str], now: float) -> dict[str, Any]:
        """``{"snapshots": [...], "total_count": n}`` for the filters ``desktop_id``, ``snapshot_name``,
        ``disk_type``, ``status`` and the page ``offset``/``limit`` (≤ 1000)."""
        desktop_id = query.get("desktop_id")
        if desktop_id is not None:
            candidates = list(self._by_desktop.get((project_id, desktop_id), ()))
        else:
            candidates = [s for (p, _), kept in self._by_desktop.items() if p == project_id for s in kept]
        docs = [s.to_dict(now) for s in candidates]
        for name in ("disk_type", "status"):
            if name in query:
                docs = [d for d in docs if d[name] == query[name]]
        if "snapshot_name" in query:
            docs = [d for d in docs if query["snapshot_name"] in d["snapshot_name"]]
        offset = max(0, int(query.get("offset", "0")))
        limit = min(1000, max(1, int(query.get("limit", "100"))))
        return {"snapshots": docs[offset : offset + limit], "total_count": len(docs)}

    def repeated(self) -> dict[str, int]:
        """Desktops (``project/desktop``) with more than one snapshot, and how many they have."""
        return {f"{p}/{d}": len(kept) for (p, d), kept in self._by_desktop.items() if len(kept) > 1}
