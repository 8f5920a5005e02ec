"""The snapshot listing reader: the query as the SDK spells it, the answer as the SDK defines it, and paging that
stops once the rest is older than anything asked about."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.cloud.snapshots import ListingUnreadable, SnapshotReader, listing_path, parse_listing
from snapworker.domain.snapshots import SKEW_S

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC).timestamp()


def stamp(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def item(sid: str, desktop: str = "d1", seconds_ago: float = 0.0, **fields: Any) -> dict[str, Any]:
    return {"snapshot_id": sid, "desktop_id": desktop, "create_time": stamp(seconds_ago), **fields}


class PagedApi:
    """Serves ``items`` in pages of at most 1,000, as the listing does; records each query."""

    def __init__(self, items: list[dict[str, Any]], *, total: bool = True) -> None:
        self.items, self.total = items, total
        self.read_limiter: Limiter = RateLimiter(1000.0, 1000, 100)
        self.queries: list[dict[str, list[str]]] = []
        self.grants: list[Grant | None] = []

    async def get_json(
        self, path: str, project_id: str, *, limiter: Limiter | None = None, grant: Grant | None = None
    ) -> dict[str, Any]:
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(urlsplit(path).query):
            query.setdefault(name, []).append(value)
        self.queries.append(query)
        self.grants.append(grant)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        doc: dict[str, Any] = {"desktop_snapshots": self.items[offset : offset + limit]}
        if self.total:
            doc["total_count"] = len(self.items)
        return doc


def test_the_query_lists_desktops_as_repeated_keys_newest_first() -> None:
    path = listing_path("p/1", ["d1", "d2"], offset=1000)
    url = urlsplit(path)
    assert url.path == "/v2/p%2F1/snapshots"
    assert parse_qsl(url.query) == [
        ("desktop_ids", "d1"),
        ("desktop_ids", "d2"),
        ("sort_field", "create_time"),
        ("sort_type", "DESC"),
        ("offset", "1000"),
        ("limit", "1000"),
    ]


def test_an_item_becomes_a_snapshot_view_with_its_posix_time() -> None:
    doc = {
        "desktop_snapshots": [
            item("s1", desktop_name="desk-1", snapshot_name="desk-1-n-20261203120000", is_system_disk=False)
            | {"description": "snapworker:a1", "status": "create_success"}
        ],
        "total_count": 1,
    }
    [view], total = parse_listing(doc)
    assert total == 1
    assert (view.snapshot_id, view.desktop_name, view.is_system_disk, view.description) == (
        "s1",
        "desk-1",
        False,
        "snapworker:a1",
    )
    assert view.created_at == NOW


def test_an_answer_without_desktop_snapshots_is_unreadable() -> None:
    with pytest.raises(ListingUnreadable, match="desktop_snapshots"):
        parse_listing({"snapshots": [item("s1")], "total_count": 1})


def test_items_without_ids_are_skipped_and_bad_times_are_unknown() -> None:
    views, _ = parse_listing({"desktop_snapshots": [{"desktop_id": "d1"}, item("s1") | {"create_time": "soon"}]})
    assert [(v.snapshot_id, v.created_at) for v in views] == [("s1", None)]


async def test_pages_are_read_until_total_count() -> None:
    api = PagedApi([item(f"s{i}") for i in range(2500)])
    found = await SnapshotReader(api).list_snapshots("p", ["d1"], since=NOW - 60)
    assert len(found["d1"]) == 2500
    assert [q["offset"] for q in api.queries] == [["0"], ["1000"], ["2000"]]


async def test_paging_stops_once_the_sorted_rest_is_older_than_the_intent_and_the_skew() -> None:
    api = PagedApi([item(f"s{i}", seconds_ago=i) for i in range(5000)])
    since = NOW - 500 + SKEW_S  # the first page reaches 999 s ago: older than since - SKEW_S
    found = await SnapshotReader(api).list_snapshots("p", ["d1"], since=since)
    assert len(api.queries) == 1
    assert len(found["d1"]) == 1000


async def test_an_unsorted_answer_is_read_to_its_end() -> None:
    items = [item(f"s{i}", seconds_ago=(i * 7919) % 5000) for i in range(3000)]
    api = PagedApi(items)
    await SnapshotReader(api).list_snapshots("p", ["d1"], since=NOW)
    assert len(api.queries) == 3


async def test_without_total_count_a_short_page_is_the_last() -> None:
    api = PagedApi([item(f"s{i}") for i in range(1200)], total=False)
    found = await SnapshotReader(api).list_snapshots("p", ["d1"], since=NOW - 60)
    assert (len(api.queries), len(found["d1"])) == (2, 1200)


async def test_snapshots_are_grouped_by_the_desktops_asked_about() -> None:
    api = PagedApi([item("s1", "d1"), item("s2", "d2"), item("s3", "d9")])
    found = await SnapshotReader(api).list_snapshots("p", ["d1", "d2"], since=NOW)
    assert {d: [s.snapshot_id for s in views] for d, views in found.items()} == {"d1": ["s1"], "d2": ["s2"]}


async def test_a_granted_read_serves_the_first_page_only() -> None:
    api = PagedApi([item(f"s{i}") for i in range(1500)])
    grant = await api.read_limiter.acquire("p")
    await SnapshotReader(api).list_snapshots("p", ["d1"], since=NOW - 60, grant=grant)
    assert api.grants == [grant, None]


async def test_a_listing_asks_for_at_most_100_desktops() -> None:
    with pytest.raises(ValueError, match="1 to 100"):
        await SnapshotReader(PagedApi([])).list_snapshots("p", [f"d{i}" for i in range(101)], since=NOW)
