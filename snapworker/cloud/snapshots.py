"""Reading the snapshot listing, ``GET /v2/{project_id}/snapshots``, for many desktops at once, under the read budget.

The shape is the SDK's (``ListDesktopSnapshotRequest`` / ``ListDesktopSnapshotResponse``): ``desktop_ids`` as
repeated query keys, ``offset`` from 0, ``limit`` up to 1,000, and an answer ``{"desktop_snapshots": [...],
"total_count": N}`` whose items are ``DesktopSnapshotDetailInfo``. The answer's documents become
:class:`~snapworker.domain.snapshots.SnapshotView` values here.

One listing asks for up to :data:`LISTING_DESKTOPS` desktops, newest first (``sort_field=create_time``,
``sort_type=DESC``), and reads its pages until ``total_count`` is reached, or, once the pages have shown
themselves sorted, until a page ends with a snapshot older than anything asked about (minus the clock skew
allowed): a desktop with years of nightly snapshots costs a page, not hundreds. The name filter is not used:
whether ``snapshot_name`` matches exactly or by part is not documented, and the generated name holds more than the
given name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode

from snapworker.cloud.limiter import Grant, Limiter
from snapworker.domain.snapshots import SKEW_S, SnapshotView

__all__ = ["LISTING_DESKTOPS", "ListingUnreadable", "SnapshotReader", "listing_path", "parse_listing"]

#: Desktops asked about in one listing (its query then stays near 5 kB, as a batch-create body of 100 would).
LISTING_DESKTOPS: Final = 100
_PAGE: Final = 1000  # the API's largest page
#: Pages one listing reads at most before it gives up (unsorted answers, or desktops with huge histories).
MAX_PAGES: Final = 20


class ListingUnreadable(ValueError):
    """A listing answer that is not in the documented shape, or one too long to read to its end."""


class _Reads(Protocol):
    """What the reader needs of the API client (WorkspaceClient)."""

    @property
    def read_limiter(self) -> Limiter: ...

    async def get_json(
        self, path: str, project_id: str, *, limiter: Limiter | None = None, grant: Grant | None = None
    ) -> dict[str, Any]: ...


def listing_path(project_id: str, desktop_ids: Sequence[str], *, offset: int, limit: int = _PAGE) -> str:
    """The path and query of one listing page, newest first, as the SDK spells a list (repeated keys)."""
    query = [("desktop_ids", d) for d in desktop_ids]
    query += [("sort_field", "create_time"), ("sort_type", "DESC"), ("offset", str(offset)), ("limit", str(limit))]
    return f"/v2/{quote(project_id, safe='')}/snapshots?{urlencode(query)}"


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def parse_create_time(raw: object) -> float | None:
    """POSIX seconds of a ``create_time`` (documented ``yyyy-MM-ddTHH:mm:ssZ``, UTC; fractions and offsets are
    read too); None if unreadable. A time without a zone is UTC, as documented."""
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).timestamp()


def _snapshot(item: Mapping[str, Any]) -> SnapshotView | None:
    snapshot_id, desktop_id = _text(item.get("snapshot_id")), _text(item.get("desktop_id"))
    if snapshot_id is None or desktop_id is None:
        return None
    system, name, description = item.get("is_system_disk"), item.get("snapshot_name"), item.get("description")
    return SnapshotView(
        snapshot_id=snapshot_id,
        snapshot_name=name if isinstance(name, str) else "",
        desktop_id=desktop_id,
        desktop_name=_text(item.get("desktop_name")),
        is_system_disk=system if isinstance(system, bool) else None,
        status=_text(item.get("status")),
        description=description if isinstance(description, str) else None,
        created_at=parse_create_time(item.get("create_time")),
    )


def parse_listing(doc: Mapping[str, Any]) -> tuple[list[SnapshotView], int | None]:
    """The snapshots of one listing page and its ``total_count`` (None if absent). Items without a snapshot or
    desktop ID are skipped; an answer without the ``desktop_snapshots`` list raises ListingUnreadable."""
    items = doc.get("desktop_snapshots")
    if not isinstance(items, list):
        raise ListingUnreadable(f"the listing has no desktop_snapshots list (keys: {sorted(doc)[:8]})")
    total = doc.get("total_count")
    found = [s for s in (_snapshot(i) for i in items if isinstance(i, Mapping)) if s is not None]
    return found, total if isinstance(total, int) and not isinstance(total, bool) else None


class SnapshotReader:
    """Lists the snapshots of many desktops of one project through ``client``, under its read budget."""

    def __init__(self, client: _Reads) -> None:
        self._client = client
        self.reads = 0  # GET tries asked for (pages), for the metrics

    def read_limiter(self, project_id: str) -> Limiter:
        """The budget a listing of ``project_id`` waits for (one per credential)."""
        return self._client.read_limiter

    async def list_snapshots(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float, grant: Grant | None = None
    ) -> dict[str, list[SnapshotView]]:
        """Every listed snapshot of ``desktop_ids`` (at most LISTING_DESKTOPS) created since ``since`` (POSIX,
        less the clock skew allowed), by desktop, newest first; older ones may be included. ``grant``: a read the
        budget already granted, for the first page. Raises the read's ApiError, or ListingUnreadable."""
        if not 1 <= len(desktop_ids) <= LISTING_DESKTOPS:
            raise ValueError(f"a listing asks for 1 to {LISTING_DESKTOPS} desktops, got {len(desktop_ids)}")
        found: dict[str, list[SnapshotView]] = {d: [] for d in desktop_ids}
        offset = 0
        newest_first = True
        previous = math.inf
        for _ in range(MAX_PAGES):
            self.reads += 1
            doc = await self._client.get_json(
                listing_path(project_id, desktop_ids, offset=offset), project_id, grant=grant
            )
            grant = None
            page, total = parse_listing(doc)
            for snapshot in page:
                created = snapshot.created_at if snapshot.created_at is not None else math.nan
                newest_first = newest_first and created <= previous  # nan compares False: order unknown
                previous = created
                if snapshot.desktop_id in found:
                    found[snapshot.desktop_id].append(snapshot)
            offset += len(page)
            if not page or (offset >= total if total is not None else len(page) < _PAGE):
                return found
            if newest_first and previous < since - SKEW_S:
                return found  # sorted, and the rest is older than any call asked about
        raise ListingUnreadable(
            f"more than {MAX_PAGES * _PAGE} snapshots listed for {len(desktop_ids)} desktops since "
            f"{datetime.fromtimestamp(since, UTC):%Y-%m-%dT%H:%M:%SZ}, or not sorted by create_time"
        )
