"""The reconciler: desktops asked about share listings (late, under the read budget), and a listing that fails
leaves its desktops unknown, never absent."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest

from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.core import MergeKey
from snapworker.domain.snapshots import Absent, Created, Doubt, SnapshotView, Unknown, marker
from snapworker.idempotency.reconcile import Reconciler

KEY = MergeKey("p1", None, None, None)
MINE = marker("a1")


def doubt() -> Doubt:
    return Doubt(frozenset({MINE}), 1_800_000_000.0, None)


class HeldLimiter(RateLimiter):
    """A read budget that grants nothing until ``opened`` is set, and counts its grants."""

    def __init__(self) -> None:
        super().__init__(1000.0, 1000, 100)
        self.opened = asyncio.Event()
        self.grants = 0

    async def acquire(self, project_id: str) -> Grant:
        await self.opened.wait()
        self.grants += 1
        return await super().acquire(project_id)


class FakeSource:
    """Lists, for each desktop asked about, the snapshots in ``made`` (desktop -> its marker); desktops in
    ``failing`` make the whole listing fail."""

    def __init__(self, made: Mapping[str, str] | None = None, failing: frozenset[str] = frozenset()) -> None:
        self.limiter = HeldLimiter()
        self.limiter.opened.set()
        self.made = dict(made or {})
        self.failing = failing
        self.listings: list[tuple[str, ...]] = []

    def read_limiter(self, project_id: str) -> Limiter:
        return self.limiter

    async def list_snapshots(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float, grant: Grant | None = None
    ) -> dict[str, list[SnapshotView]]:
        if grant is not None:
            self.limiter.release()
        self.listings.append(tuple(desktop_ids))
        await asyncio.sleep(0)
        if self.failing.intersection(desktop_ids):
            raise RuntimeError("the listing failed")
        return {
            d: [SnapshotView(f"s-{d}", "n", d, None, True, "create_success", self.made[d], None)]
            for d in desktop_ids
            if d in self.made
        }


async def test_a_desktop_with_the_attempts_snapshot_is_created_and_one_without_is_absent() -> None:
    source = FakeSource({"d1": MINE, "d2": marker("someone-else")})
    checked = await Reconciler(source).check(KEY, {"d1": doubt(), "d2": doubt(), "d3": doubt()})
    assert checked.verdicts == {"d1": Created("s-d1"), "d2": Absent(), "d3": Absent()}
    assert source.listings == [("d1", "d2", "d3")]


async def test_desktops_asked_about_while_a_listing_waits_for_the_budget_ride_on_it() -> None:
    source = FakeSource()
    source.limiter.opened.clear()
    reconciler = Reconciler(source, parallel=1)
    checks = [asyncio.create_task(reconciler.check(KEY, {f"d{i}": doubt()})) for i in range(250)]
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    await asyncio.gather(*checks)
    assert [len(listing) for listing in source.listings] == [100, 100, 50]
    assert reconciler.listings == 3


async def test_a_desktop_asked_about_twice_is_listed_once_and_answers_both() -> None:
    source = FakeSource({"d1": MINE})
    source.limiter.opened.clear()
    reconciler = Reconciler(source)
    both = [asyncio.create_task(reconciler.check(KEY, {"d1": doubt()})) for _ in range(2)]
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    first, second = await asyncio.gather(*both)
    assert first.verdicts == second.verdicts == {"d1": Created("s-d1")}
    assert source.listings == [("d1",)]


async def test_every_listing_waits_for_a_read_of_the_budget() -> None:
    source = FakeSource()
    await Reconciler(source).check(KEY, {f"d{i}": doubt() for i in range(150)})
    assert source.limiter.grants == len(source.listings) == 2


async def test_a_listing_that_fails_leaves_its_desktops_unknown_and_the_others_are_still_listed() -> None:
    source = FakeSource({"d150": MINE}, failing=frozenset({"d0"}))
    checked = await Reconciler(source, parallel=1).check(KEY, {f"d{i}": doubt() for i in range(151)})
    unknown = [d for d, v in checked.verdicts.items() if isinstance(v, Unknown)]
    assert len(unknown) == 100
    assert "the listing failed" in checked.verdicts["d0"].reason  # type: ignore[union-attr]
    assert checked.verdicts["d150"] == Created("s-d150")


async def test_without_a_source_every_desktop_is_unknown() -> None:
    checked = await Reconciler(None).check(KEY, {"d1": doubt()})
    assert isinstance(checked.verdicts["d1"], Unknown)


async def test_a_check_cancelled_while_it_waits_is_not_listed() -> None:
    source = FakeSource()
    source.limiter.opened.clear()
    reconciler = Reconciler(source, parallel=1)
    gone = asyncio.create_task(reconciler.check(KEY, {"gone": doubt()}))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    kept = asyncio.create_task(reconciler.check(KEY, {"kept": doubt()}))
    await asyncio.sleep(0.01)
    source.limiter.opened.set()
    await kept
    assert source.listings == [("kept",)]
