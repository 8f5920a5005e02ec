"""Reconciliation: did a call whose outcome was never recorded create snapshots? Ask the API, desktop by desktop.

A request whose record holds an intent but no outcome for some desktops was being sent when its worker died (or
the call's answer timed out). Calling again blindly could snapshot those desktops twice, so for each one we list
its snapshots (``GET /v2/{project_id}/snapshots?desktop_id=..&snapshot_name=..``) and look for one the call
would have made: of that desktop, whose name contains the request's snapshot name (Huawei names a snapshot
desktop name + given name + timestamp), created no earlier than ``SKEW_S`` before the intent, and not
``create_failed``. Then:

- **found**: the desktop is covered; its result entry is a job entry with ``job_id`` ``reconciled:<snapshot_id>``
  (the listing does not say which job made the snapshot);
- **absent**: the call did not create it: the desktop is sent again;
- **unknown** (the listing failed, or was cut short before the desktop could be ruled out): the desktop fails with
  ``SNAPWORKER.UNRECONCILED``, ``retryable: true``, ``maybe_created: true``, as a response timeout always did.

Listings are reads (not batch-create's rate budget), at most ``concurrency`` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from snapworker.contract.models import JobEntry, ResultError
from snapworker.core import MergeKey

__all__ = ["SKEW_S", "Reconciled", "SnapshotReader", "reconcile", "snapshot_name"]

log = logging.getLogger("snapworker.idempotency")

#: Clock skew allowed between this host (the intent's time) and the API (the snapshot's create_time).
SKEW_S = 300.0
_PAGE = 1000  # the API's largest page
#: A GET of a path (with its query) answered with a JSON object: WorkspaceClient.get_json.
SnapshotReader = Callable[[str, str], Awaitable[Mapping[str, Any]]]


@dataclass(slots=True)
class Reconciled:
    """Each desktop asked about, in exactly one of: created (-> snapshot id), absent, unknown."""

    created: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)  # desktop -> why

    def entries(self) -> list[JobEntry | ResultError]:
        """Result entries of the created and unknown desktops (the absent ones are to be sent again)."""
        out: list[JobEntry | ResultError] = [
            JobEntry(job_id=f"reconciled:{snapshot_id}", desktop_ids=(desktop_id,))
            for desktop_id, snapshot_id in self.created.items()
        ]
        for desktop_id, why in self.unknown.items():
            out.append(
                ResultError(
                    desktop_ids=(desktop_id,),
                    http_status=None,
                    error_code="SNAPWORKER.UNRECONCILED",
                    error_msg=f"a call for this desktop may have created a snapshot, and it could not be checked: "
                    f"{why}"[:2000],
                    retryable=True,
                    maybe_created=True,
                )
            )
        return out


def snapshot_name(key: MergeKey) -> str | None:
    """The name the request gives its snapshots (system disk's first), if any."""
    for info in (key.system_disk_snapshot, key.data_disk_snapshot):
        if info is not None and info.name:
            return info.name
    return None


def _created_at(snapshot: Mapping[str, Any]) -> datetime | None:
    raw = snapshot.get("create_time")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


async def _one(read: SnapshotReader, key: MergeKey, desktop_id: str, since: float, out: Reconciled) -> None:
    name = snapshot_name(key)
    query = {"desktop_id": desktop_id, "limit": str(_PAGE), "offset": "0"}
    if name is not None:
        query["snapshot_name"] = name
    path = f"/v2/{quote(key.project_id, safe='')}/snapshots?{urlencode(query)}"
    try:
        page = await read(path, key.project_id)
        snapshots = page.get("snapshots")
        if not isinstance(snapshots, list):
            raise ValueError("the answer has no snapshots list")
    except Exception as exc:  # any failure to list leaves the question open: never guess "absent"
        out.unknown[desktop_id] = f"listing its snapshots failed: {exc}"
        return
    for snapshot in snapshots:
        if not isinstance(snapshot, Mapping) or snapshot.get("desktop_id") != desktop_id:
            continue
        if name is not None and name not in str(snapshot.get("snapshot_name", "")):
            continue
        if snapshot.get("status") == "create_failed":
            continue
        created = _created_at(snapshot)
        if created is None:
            out.unknown[desktop_id] = "a snapshot without a readable create_time"
            return
        if created.timestamp() >= since - SKEW_S:
            out.created[desktop_id] = str(snapshot.get("snapshot_id") or snapshot.get("id") or "unknown")
            return
    total = page.get("total_count")
    if isinstance(total, int) and total > len(snapshots):
        out.unknown[desktop_id] = f"{total} snapshots, more than one page"
        return
    out.absent.append(desktop_id)


async def reconcile(
    read: SnapshotReader | None,
    key: MergeKey,
    announced: Mapping[str, float],
    *,
    concurrency: int = 8,
) -> Reconciled:
    """Sort ``announced`` desktops (desktop -> POSIX time of the intent) into created / absent / unknown.
    Without a reader (an API that cannot list snapshots) every desktop is unknown."""
    out = Reconciled()
    if read is None:
        out.unknown.update(dict.fromkeys(announced, "this API client cannot list snapshots"))
        return out
    slots = asyncio.Semaphore(concurrency)

    async def bounded(desktop_id: str, since: float) -> None:
        async with slots:
            await _one(read, key, desktop_id, since, out)

    await asyncio.gather(*(bounded(d, t) for d, t in announced.items()))
    found = len(out.created)
    log.info(
        "reconciled %d desktops of project %s against their snapshots: %d created, %d absent, %d unknown",
        len(announced),
        key.project_id,
        found,
        len(out.absent),
        len(out.unknown),
        extra={"project_id": key.project_id},
    )
    return out


def ordered(desktops: Sequence[str], subset: set[str]) -> tuple[str, ...]:
    """``subset`` in the order of ``desktops``."""
    return tuple(d for d in desktops if d in subset)
