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

:class:`SharedListings` lets many askers (job tracking's looks, one per tracking unit) share listings: the desktops
asked about are queued per project, and a listing takes the first :data:`LISTING_DESKTOPS` of them only once the
read budget granted it, so every desktop asked about while it waited rides along.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode

from snapworker.cloud.limiter import Grant, Limiter
from snapworker.domain.snapshots import SKEW_S, SnapshotView

__all__ = [
    "LISTING_DESKTOPS",
    "ListingUnreadable",
    "SharedListings",
    "SnapshotReader",
    "SnapshotSource",
    "listing_path",
    "parse_listing",
]

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


class SnapshotSource(Protocol):
    """The snapshot listing per project: SnapshotReader (one credential) or AccountRouter (one per account)."""

    def read_limiter(self, project_id: str) -> Limiter: ...

    async def list_snapshots(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float, grant: Grant | None = None
    ) -> Mapping[str, list[SnapshotView]]: ...


@dataclass(slots=True)
class _Ask:
    desktop_id: str
    since: float
    answer: asyncio.Future[list[SnapshotView]]


class SharedListings:
    """Listings of ``source`` shared by whoever asks at the same time (see the module docstring): at most
    ``parallel`` listings per project in flight, each of up to LISTING_DESKTOPS desktops, each waiting for a read
    of the project's budget first. ``listings`` counts the listings made (each one or more pages)."""

    def __init__(self, source: SnapshotSource, *, parallel: int = 2) -> None:
        self._source = source
        self._parallel = parallel
        self._queues: dict[str, deque[_Ask]] = {}
        self._listing: dict[str, int] = {}  # project -> listings in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.listings = 0

    async def listed(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float
    ) -> dict[str, list[SnapshotView]]:
        """The snapshots of each of ``desktop_ids`` (any number) created since ``since`` (POSIX, less the clock skew
        allowed), newest first, as :meth:`SnapshotReader.list_snapshots` lists them: every desktop asked about is a
        key, its list complete for that span. Raises what the listing of any of them raised (the API's error,
        ListingUnreadable, or the budget's refusal)."""
        if not desktop_ids:
            return {}
        answers = self.ask(project_id, dict.fromkeys(desktop_ids, since))
        try:
            return {desktop_id: await answer for desktop_id, answer in answers.items()}
        finally:
            for answer in answers.values():  # failed or cancelled: nobody waits for the rest any more
                if not answer.done():
                    answer.cancel()

    def ask(self, project_id: str, since_of: Mapping[str, float]) -> dict[str, asyncio.Future[list[SnapshotView]]]:
        """Queue each desktop of ``since_of`` (with the POSIX time its listing starts from) for the project's next
        listings; the future of each: its snapshots, or what its listing raised. Cancel the futures nobody waits
        for any more, so that no listing is spent on them."""
        loop = asyncio.get_running_loop()
        asks = [_Ask(d, since, loop.create_future()) for d, since in since_of.items()]
        self._queues.setdefault(project_id, deque()).extend(asks)
        self._start(project_id)
        return {ask.desktop_id: ask.answer for ask in asks}

    def _start(self, project_id: str) -> None:
        while self._listing.get(project_id, 0) < min(self._parallel, len(self._queues.get(project_id, ()))):
            self._listing[project_id] = self._listing.get(project_id, 0) + 1
            task = asyncio.create_task(self._drain(project_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, project_id: str) -> None:
        """List the project's queued desktops, a listing at a time, until its queue is empty."""
        try:
            while self._queues.get(project_id):
                try:
                    grant = await self._source.read_limiter(project_id).acquire(project_id)
                except Exception as exc:  # no budget for this project (no account serves it): nobody can list
                    self._fail(self._take(project_id, everything=True), exc)
                    continue
                taken = self._take(project_id)  # late: every desktop asked about while the budget was awaited
                if not taken:
                    self._source.read_limiter(project_id).release()
                    continue
                since = min(ask.since for asks in taken.values() for ask in asks)
                self.listings += 1
                try:
                    found = await self._source.list_snapshots(project_id, list(taken), since=since, grant=grant)
                except Exception as exc:
                    self._fail(taken, exc)
                    continue
                for desktop_id, asks in taken.items():
                    for ask in asks:
                        if not ask.answer.done():
                            ask.answer.set_result(list(found.get(desktop_id, ())))
        finally:
            self._listing[project_id] -= 1
            if not self._listing[project_id]:
                del self._listing[project_id]
                if not self._queues.get(project_id):
                    self._queues.pop(project_id, None)

    def _take(self, project_id: str, *, everything: bool = False) -> dict[str, list[_Ask]]:
        """The asks of the first LISTING_DESKTOPS distinct desktops queued (all asks of each), skipping those
        nobody waits for any more."""
        queue = self._queues.get(project_id, deque())
        taken: dict[str, list[_Ask]] = {}
        kept: deque[_Ask] = deque()
        while queue:
            ask = queue.popleft()
            if ask.answer.done():
                continue
            if ask.desktop_id in taken or everything or len(taken) < LISTING_DESKTOPS:
                taken.setdefault(ask.desktop_id, []).append(ask)
            else:
                kept.append(ask)
        queue.extend(kept)
        return taken

    @staticmethod
    def _fail(taken: Mapping[str, list[_Ask]], exc: Exception) -> None:
        for asks in taken.values():
            for ask in asks:
                if not ask.answer.done():
                    ask.answer.set_exception(exc)
                    with contextlib.suppress(BaseException):
                        ask.answer.exception()  # retrieved: a waiter gone meanwhile logs nothing

    async def close(self) -> None:
        """Cancel the listings in flight (their waiters see the cancellation)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
