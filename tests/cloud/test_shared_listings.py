"""Snapshot listings shared by job tracking's looks: desktops asked about meanwhile ride on one listing (late, under
the read budget), at most 100 a listing, and a listing that fails fails only its own askers."""

from __future__ import annotations

import asyncio

import pytest

from snapworker.cloud.snapshots import SharedListings
from tests.idempotency.test_reconcile import MINE, FakeSource

SINCE = 1_800_000_000.0


async def test_every_desktop_asked_about_gets_its_list_even_an_empty_one() -> None:
    listed = await SharedListings(FakeSource({"d1": MINE})).listed("p1", ["d1", "d2"], since=SINCE)
    assert [s.snapshot_id for s in listed["d1"]] == ["s-d1"]
    assert listed["d2"] == []


async def test_looks_asking_while_a_listing_waits_for_the_budget_share_it_100_desktops_at_a_time() -> None:
    source = FakeSource()
    source.limiter.opened.clear()
    shared = SharedListings(source, parallel=1)
    looks = [asyncio.create_task(shared.listed("p1", [f"d{i}"], since=SINCE)) for i in range(250)]
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    await asyncio.gather(*looks)
    assert [len(listing) for listing in source.listings] == [100, 100, 50]
    assert shared.listings == source.limiter.grants == 3


async def test_one_desktop_asked_about_by_two_looks_is_listed_once() -> None:
    source = FakeSource({"d1": MINE})
    source.limiter.opened.clear()
    shared = SharedListings(source)
    both = [asyncio.create_task(shared.listed("p1", ["d1"], since=SINCE)) for _ in range(2)]
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    first, second = await asyncio.gather(*both)
    assert first == second
    assert source.listings == [("d1",)]


async def test_projects_are_listed_apart() -> None:
    source = FakeSource()
    shared = SharedListings(source)
    await asyncio.gather(shared.listed("p1", ["d1"], since=SINCE), shared.listed("p2", ["d2"], since=SINCE))
    assert sorted(source.listings) == [("d1",), ("d2",)]


async def test_a_listing_that_fails_raises_to_its_askers_only() -> None:
    source = FakeSource(failing=frozenset({"d-bad"}))
    source.limiter.opened.clear()
    shared = SharedListings(source, parallel=1)
    bad = asyncio.create_task(shared.listed("p1", ["d-bad"], since=SINCE))
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    with pytest.raises(RuntimeError, match="the listing failed"):
        await bad
    assert await shared.listed("p1", ["d-good"], since=SINCE) == {"d-good": []}


async def test_nothing_asked_lists_nothing() -> None:
    source = FakeSource()
    assert await SharedListings(source).listed("p1", [], since=SINCE) == {}
    assert source.listings == []
