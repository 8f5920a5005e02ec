"""Telling which snapshot a call made: the marker it writes, and the verdict on a desktop's listed snapshots."""

from __future__ import annotations

from snapworker.contract.models import DiskSnapshotInfo, JobEntry, ResultError
from snapworker.domain.keys import MergeKey
from snapworker.domain.snapshots import (
    SKEW_S,
    Absent,
    Created,
    Doubt,
    Reconciled,
    SnapshotView,
    Unknown,
    attribute,
    given_name,
    marked_disks,
    marker,
)

NOW = 1_800_000_000.0
MINE, OTHER = marker("attempt-1"), marker("attempt-2")


def snapshot(
    sid: str = "s1",
    *,
    description: str | None = MINE,
    name: str = "desktop-d1-nightly-20270115083000",
    status: str = "create_success",
    created_at: float | None = NOW,
) -> SnapshotView:
    return SnapshotView(sid, name, "d1", "desktop-d1", True, status, description, created_at)


def marked(*markers: str) -> Doubt:
    return Doubt(frozenset(markers), NOW - 10, "nightly")


UNMARKED = Doubt(frozenset(), NOW - 10, "nightly")


def test_the_marker_names_the_attempt() -> None:
    assert marker("abc") == "snapworker:abc"


def test_without_a_disk_type_the_system_disk_carries_the_marker() -> None:
    assert marked_disks(MergeKey("p", None, None, None)) == ("system_disk_snapshot",)


def test_with_disk_type_all_both_disks_carry_the_marker_unless_described() -> None:
    described = DiskSnapshotInfo(name="n", description="mine")
    assert marked_disks(MergeKey("p", "ALL", None, None)) == ("system_disk_snapshot", "data_disk_snapshot")
    assert marked_disks(MergeKey("p", "ALL", described, None)) == ("data_disk_snapshot",)
    assert marked_disks(MergeKey("p", "DATA_DISKS", None, described)) == ()


def test_a_snapshot_with_the_attempts_marker_is_created_by_it() -> None:
    assert attribute(marked(MINE), [snapshot("other", description=OTHER), snapshot("s1")]) == Created("s1")


def test_another_attempts_snapshot_of_the_same_desktop_and_name_is_not_this_ones() -> None:
    assert attribute(marked(MINE), [snapshot("s9", description=OTHER)]) == Absent()


def test_a_failed_snapshot_with_the_marker_counts_as_none() -> None:
    assert attribute(marked(MINE), [snapshot(status="create_failed")]) == Absent()


def test_unmarked_a_lookalike_created_since_the_intent_cannot_be_told_apart() -> None:
    verdict = attribute(UNMARKED, [snapshot(description="the user's own text")])
    assert isinstance(verdict, Unknown)
    assert "no marker" in verdict.reason


def test_unmarked_a_lookalike_older_than_the_intent_and_the_skew_is_not_the_calls() -> None:
    old = snapshot(description="the user's own text", created_at=NOW - 10 - SKEW_S - 1)
    assert attribute(UNMARKED, [old]) == Absent()


def test_unmarked_a_snapshot_under_another_given_name_is_not_the_calls() -> None:
    assert attribute(UNMARKED, [snapshot(name="desktop-d1-weekly-20270115083000")]) == Absent()


def test_unmarked_a_lookalike_without_a_readable_time_is_unknown() -> None:
    assert isinstance(attribute(UNMARKED, [snapshot(description="x", created_at=None)]), Unknown)


def test_the_given_name_is_the_system_disks_first() -> None:
    key = MergeKey("p", "ALL", DiskSnapshotInfo(description="x"), DiskSnapshotInfo(name="data"))
    assert given_name(key) == "data"
    assert given_name(MergeKey("p", None, None, None)) is None


def test_reconciled_entries_answer_created_desktops_with_their_snapshot_and_unknown_ones_maybe_created() -> None:
    checked = Reconciled({"d1": Created("s1"), "d2": Absent(), "d3": Unknown("listing failed")})
    job, error = checked.entries(why="a lost answer")
    assert isinstance(job, JobEntry)
    assert (job.job_id, job.desktop_ids) == ("reconciled:s1", ("d1",))
    assert isinstance(error, ResultError)
    assert (error.error_code, error.maybe_created, error.retryable) == ("SNAPWORKER.UNRECONCILED", True, True)
    assert "listing failed" in error.error_msg
    assert "a lost answer" in error.error_msg
    assert checked.absent == ["d2"]
