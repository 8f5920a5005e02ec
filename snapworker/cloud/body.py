"""The batch-create body: the exact JSON bytes a call sends (and signs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from snapworker.domain.keys import MergeKey
from snapworker.domain.snapshots import marked_disks

__all__ = ["MAX_DESKTOPS_PER_CALL", "batch_create_body"]

MAX_DESKTOPS_PER_CALL: Final = 100


def batch_create_body(key: MergeKey, desktop_ids: Sequence[str], *, marker: str | None = None) -> bytes:
    """The exact JSON bytes of a batch-create call; fields (and snapshot info fields) that are None left out.

    ``marker`` (see :mod:`snapworker.domain.snapshots`) becomes the description of each disk the call snapshots
    whose description the request left empty; a description the request gives is sent as it is."""
    if not 1 <= len(desktop_ids) <= MAX_DESKTOPS_PER_CALL:
        raise ValueError(f"batch-create takes 1 to {MAX_DESKTOPS_PER_CALL} desktops, got {len(desktop_ids)}")
    body: dict[str, Any] = {"desktop_ids": list(desktop_ids)}
    if key.disk_type is not None:
        body["disk_type"] = key.disk_type
    marked = marked_disks(key) if marker is not None else ()
    for name, info in (
        ("system_disk_snapshot", key.system_disk_snapshot),
        ("data_disk_snapshot", key.data_disk_snapshot),
    ):
        fields = info.model_dump(exclude_none=True) if info is not None else {}
        if name in marked:
            fields["description"] = marker
        if fields:  # an info with nothing set says nothing: leave it out
            body[name] = fields
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
