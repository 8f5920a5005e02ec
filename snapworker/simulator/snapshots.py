"""The simulator's snapshots: those its batch-create jobs made, listed by ``GET /v2/{project_id}/snapshots``.

Consistent with the jobs by construction: a job's snapshots are made with it (in the same handler, before the
answer), and their status is read from the job at the time asked: ``creating`` (with ``process``, the job's
percent) while the job runs, then ``create_success``, or ``create_failed`` for a desktop the job fails.

As the API documents: ``disk_type`` ALL makes two snapshots per desktop (``is_system_disk`` true, named after
``system_disk_snapshot``, and false, after ``data_disk_snapshot``); SYSTEM_DISK (or none) one system-disk
snapshot; DATA_DISKS one data-disk snapshot. A snapshot's name is desktop name + given name + timestamp
(``-``-joined, the given name left out when none was given); its description the one given for its disk, or "".

The listing answers in the SDK's shape (``ListDesktopSnapshotResponse``): ``{"desktop_snapshots": [item, ...],
"total_count": n}``, each item a ``DesktopSnapshotDetailInfo``; :func:`parse_listing_query` reads the SDK's
``ListDesktopSnapshotRequest`` query. Also the ground truth of the crash tests: :meth:`SnapshotIndex.repeated`
(desktops snapshotted by more than one job) and :meth:`SnapshotIndex.job_of`. Bounded: past ``max_snapshots``
the oldest are forgotten.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from multidict import MultiMapping

from snapworker.simulator.service import Job, desktop_name

__all__ = ["InvalidQuery", "SnapshotIndex", "SnapshotQuery", "parse_listing_query"]

#: ``disk_type`` filter -> the ``is_system_disk`` values it lists.
DISK_FILTERS: Final[dict[str, frozenset[bool]]] = {
    "SYSTEM_DISK": frozenset({True}),
    "DATA_DISKS": frozenset({False}),
    "ALL": frozenset({True, False}),
}
SORT_FIELDS: Final = frozenset({"create_time", "snapshot_name"})
SORT_TYPES: Final = frozenset({"ASC", "DESC"})
MAX_LIMIT: Final = 1000
_INTEGER = re.compile(r"-?[0-9]+")
# desktop_sid is opaque to clients: a stable id derived from the desktop id is enough.
_SID_NAMESPACE: Final = uuid.UUID("5b1d7c2e-8f0a-4c1e-9a57-3c8e2f4d6a10")


# --------------------------------------------------------------------------------------------------- the query


class InvalidQuery(ValueError):
    """A listing query the API refuses with 400 WKS.0001. ``field`` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class SnapshotQuery:
    """What a listing asks for. Filters are ANDed; None (or an empty set) filters nothing.

    ``desktop_ids`` joins ``desktop_id`` and ``desktop_ids``, and ``desktop_names`` joins ``desktop_name`` and
    ``desktop_names`` (both given: a desktop must be in both); names match exactly. ``snapshot_name`` matches by
    substring: the API does not document how it matches, and a snapshot's full name embeds the given name between
    the desktop name and a timestamp, so substring is what finds a request's snapshots. ``snapshot_names`` match
    exactly.
    """

    desktop_ids: frozenset[str] | None = None
    desktop_names: frozenset[str] | None = None
    snapshot_name: str | None = None
    snapshot_names: frozenset[str] | None = None
    system_disk: frozenset[bool] | None = None
    create_type: str | None = None
    status: str | None = None
    sort_field: str = "create_time"
    descending: bool = False
    offset: int = 0
    limit: int = MAX_LIMIT

    def matches(self, doc: dict[str, Any]) -> bool:
        """Whether a listing item passes every filter but ``desktop_ids`` (applied when picking candidates)."""
        return (
            (self.desktop_names is None or doc["desktop_name"] in self.desktop_names)
            and (self.snapshot_name is None or self.snapshot_name in doc["snapshot_name"])
            and (self.snapshot_names is None or doc["snapshot_name"] in self.snapshot_names)
            and (self.system_disk is None or doc["is_system_disk"] in self.system_disk)
            and (self.create_type is None or doc["create_type"] == self.create_type)
            and (self.status is None or doc["status"] == self.status)
        )


def _joined(query: MultiMapping[str], one: str, many: str) -> frozenset[str] | None:
    """A scalar filter and its repeated-key list form, ANDed (None: neither given)."""
    sets = [s for s in (frozenset(query.getall(one, [])[:1]), frozenset(query.getall(many, []))) if s]
    if not sets:
        return None
    return sets[0].intersection(*sets[1:])


def _integer(query: MultiMapping[str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise InvalidQuery(f"{name} must be an integer", name)
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise InvalidQuery(f"{name} must be {bound}", name)
    return value


def _choice(query: MultiMapping[str], name: str, allowed: frozenset[str]) -> str | None:
    value = query.get(name)
    if value is not None and value not in allowed:
        raise InvalidQuery(f"{name} must be one of {', '.join(sorted(allowed))}", name)
    return value


def parse_listing_query(query: MultiMapping[str]) -> SnapshotQuery:
    """Read the SDK's ``ListDesktopSnapshotRequest`` query (its lists arrive as repeated keys; of a repeated
    scalar key the first counts). Defaults: ``sort_field`` create_time, ``sort_type`` ASC, ``offset`` 0,
    ``limit`` 1000. Raises :class:`InvalidQuery` for a ``limit`` outside 1..1000, a negative ``offset``, a
    non-integer either, or a ``sort_field``, ``sort_type`` or ``disk_type`` the API does not define."""
    disk_type = _choice(query, "disk_type", frozenset(DISK_FILTERS))
    snapshot_names = frozenset(query.getall("snapshot_names", []))
    return SnapshotQuery(
        desktop_ids=_joined(query, "desktop_id", "desktop_ids"),
        desktop_names=_joined(query, "desktop_name", "desktop_names"),
        snapshot_name=query.get("snapshot_name"),
        snapshot_names=snapshot_names or None,
        system_disk=DISK_FILTERS[disk_type] if disk_type is not None else None,
        create_type=query.get("create_type"),
        status=query.get("status"),
        sort_field=_choice(query, "sort_field", SORT_FIELDS) or "create_time",
        descending=_choice(query, "sort_type", SORT_TYPES) == "DESC",
        offset=_integer(query, "offset", 0, 0, None),
        limit=_integer(query, "limit", MAX_LIMIT, 1, MAX_LIMIT),
    )


# --------------------------------------------------------------------------------------------------- snapshots


@dataclass(frozen=True, slots=True)
class _Snapshot:
    seq: int
    """Creation order: create_time has whole seconds only, so ties are listed in this order."""
    id: str
    job: Job
    desktop_id: str
    name: str
    is_system_disk: bool
    description: str

    def to_dict(self, now: float) -> dict[str, Any]:
        """The listing item (the SDK's ``DesktopSnapshotDetailInfo``) at monotonic time ``now``."""
        job = self.job
        creating = not job.done(now)
        failed = self.desktop_id in job.failing
        status = "creating" if creating else ("create_failed" if failed else "create_success")
        return {
            "snapshot_id": self.id,
            "snapshot_name": self.name,
            "desktop_id": self.desktop_id,
            "desktop_name": desktop_name(self.desktop_id),
            "desktop_sid": str(uuid.uuid5(_SID_NAMESPACE, self.desktop_id)),
            "desktop_pool_id": None,
            "is_system_disk": self.is_system_disk,
            "status": status,
            "process": job.progress(now) if creating else None,  # null: no task runs on the snapshot
            "description": self.description,
            "create_time": job.begin_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "create_type": "MANUALLY",
            "last_restore_time": None,
            "restore_fail_reason": None,
        }


def _disks(fields: dict[str, Any]) -> list[tuple[bool, dict[str, Any]]]:
    """``(is_system_disk, name/description info)`` of each snapshot a batch-create body makes per desktop."""
    disk_type = fields.get("disk_type") or "SYSTEM_DISK"
    system = fields.get("system_disk_snapshot") or {}
    data = fields.get("data_disk_snapshot") or {}
    if disk_type == "ALL":
        return [(True, system), (False, data)]
    return [(True, system)] if disk_type == "SYSTEM_DISK" else [(False, data)]


class SnapshotIndex:
    """Snapshots by id and by (project, desktop), in creation order."""

    def __init__(self, max_snapshots: int = 500_000) -> None:
        self._by_id: dict[str, _Snapshot] = {}  # insertion order is creation order: the first is the oldest
        self._by_desktop: dict[tuple[str, str], list[_Snapshot]] = {}
        self._seq: Callable[[], int] = itertools.count().__next__
        self._max = max(max_snapshots, 1)

    def record(self, job: Job, body: bytes) -> None:
        """Make the snapshots of a job just created from the batch-create ``body`` (already validated)."""
        disks = _disks(json.loads(body))
        stamp = job.begin_time.strftime("%Y%m%d%H%M%S")
        for desktop_id in job.desktop_ids:
            for is_system_disk, info in disks:
                given = info.get("name") or ""
                name = "-".join(part for part in (desktop_name(desktop_id), given, stamp) if part)
                description = info.get("description") or ""
                snapshot = _Snapshot(self._seq(), str(uuid.uuid4()), job, desktop_id, name, is_system_disk, description)
                self._by_id[snapshot.id] = snapshot
                self._by_desktop.setdefault((job.project_id, desktop_id), []).append(snapshot)
        while len(self._by_id) > self._max:
            self._forget(next(iter(self._by_id)))

    def _forget(self, snapshot_id: str) -> None:
        snapshot = self._by_id.pop(snapshot_id)
        where = (snapshot.job.project_id, snapshot.desktop_id)
        kept = self._by_desktop[where]
        kept.remove(snapshot)  # the oldest of its desktop too: at the front, found at once
        if not kept:
            del self._by_desktop[where]

    def listing(self, project_id: str, query: SnapshotQuery, now: float) -> dict[str, Any]:
        """``{"desktop_snapshots": [...], "total_count": n}``: the project's snapshots ``query`` selects, sorted
        (stably: ties in creation order, for either ``sort_type``), then paged; ``total_count`` counts every
        match, before paging."""
        if query.desktop_ids is not None:
            wanted = (s for d in query.desktop_ids for s in self._by_desktop.get((project_id, d), ()))
            candidates = sorted(wanted, key=lambda s: s.seq)
        else:
            candidates = [s for s in self._by_id.values() if s.job.project_id == project_id]
        docs = [doc for doc in (s.to_dict(now) for s in candidates) if query.matches(doc)]
        docs.sort(key=lambda doc: str(doc[query.sort_field]), reverse=query.descending)
        return {"desktop_snapshots": docs[query.offset : query.offset + query.limit], "total_count": len(docs)}

    def repeated(self) -> dict[str, int]:
        """Desktops (``project/desktop``) snapshotted by more than one job, and by how many jobs. The two
        snapshots one ``disk_type`` ALL job makes of a desktop are not a repeat."""
        jobs_by_desktop = {where: {s.job.id for s in kept} for where, kept in self._by_desktop.items()}
        return {f"{p}/{d}": len(jobs) for (p, d), jobs in jobs_by_desktop.items() if len(jobs) > 1}

    def of_desktop(self, project_id: str, desktop_id: str) -> list[dict[str, str]]:
        """Every kept snapshot of one desktop, oldest first: its id, the job that made it and its description
        (the ground truth of the recovery tests)."""
        kept = self._by_desktop.get((project_id, desktop_id), ())
        return [{"snapshot_id": s.id, "job_id": s.job.id, "description": s.description} for s in kept]

    def job_of(self, snapshot_id: str) -> str | None:
        """The id of the job that made a snapshot, or None if it is unknown (or forgotten)."""
        snapshot = self._by_id.get(snapshot_id)
        return snapshot.job.id if snapshot is not None else None

    def __len__(self) -> int:
        return len(self._by_id)
