"""What the snapshot listing says of a desktop answered from reconciliation, sans I/O.

Such a desktop (``job_id`` ``reconciled:<snapshot_id>``) has no job to read: reconciliation found its snapshot in
the listing, which names no job. It is followed through the listing instead, by the status of that one snapshot
(the SDK's ``DesktopSnapshotDetailInfo.status``): ``creating`` while its job runs, then ``create_success`` or
``create_failed``. With ``disk_type`` ALL a call makes two snapshots of a desktop; reconciliation names one, and
its status is the desktop's outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final

from snapworker.contract.models import DesktopOutcome
from snapworker.domain.snapshots import SnapshotView

__all__ = ["SNAPSHOT_LOOKBACK_S", "snapshot_outcome"]

#: How far before its tracking unit began a snapshot found by reconciliation is looked for. Its create_time is not
#: kept (the result names only its ID), and the reconciliation that found it came after it: by RECONCILE_DELAY_S, a
#: lease, or hours with every worker down. A day of listing, newest first, is a page or two for most desktops; a
#: snapshot created before is not found, and its desktop ends ``unknown``, never guessed.
SNAPSHOT_LOOKBACK_S: Final = 86_400.0
# A snapshot being (or having been) restored from was created: its creation ended well.
_SUCCEEDED: Final = frozenset({"create_success", "restoring", "restore_success", "restore_failed"})
_FAILED: Final = "create_failed"


def snapshot_outcome(
    snapshot_id: str, listed: Sequence[SnapshotView], since: datetime
) -> tuple[DesktopOutcome | None, str | None]:
    """The outcome of a desktop whose snapshot is ``snapshot_id``, and why, from its desktop's ``listed``
    snapshots (every one created since ``since``; older ones may be there too). ``(None, None)``: still running
    (``creating``, or a status nobody documented). Missing from the list: ``unknown`` (deleted, or created before
    ``since``), since looking again would tell nothing more."""
    found = next((s for s in listed if s.snapshot_id == snapshot_id), None)
    if found is None:
        return "unknown", (
            f"its snapshot {snapshot_id} is not listed among the desktop's snapshots since "
            f"{since:%Y-%m-%dT%H:%M:%SZ}: deleted, or created before"
        )
    if found.status in _SUCCEEDED:
        return "succeeded", None
    if found.status == _FAILED:
        return "failed", f"its snapshot {snapshot_id} is listed {found.status}"
    return None, None
