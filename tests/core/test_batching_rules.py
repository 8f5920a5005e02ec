"""The batching rules, one behaviour per test (no I/O, time passed in)."""

from __future__ import annotations

import pytest

from snapworker.contract.models import JobEntry, ResultError
from snapworker.core import BatchingCore, MergeKey
from tests.core.helpers import LATER, LINGER, error_for, job_for, request, take_all


def core(max_batch: int = 100) -> BatchingCore:
    return BatchingCore(max_batch=max_batch, linger_s=LINGER)


def ids(n: int, prefix: str = "d") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_a_full_batch_may_go_at_once() -> None:
    c = core(max_batch=3)
    assert c.submit("t1", request("p1", *ids(3)), "r1", None, now=0.0) is True
    [batch] = take_all(c, now=0.0)
    assert batch.desktop_ids == ("d0", "d1", "d2")
    assert batch.reason == "full"


def test_a_partial_batch_waits_for_linger() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    assert c.next_deadline(0.0) == pytest.approx(LINGER)
    assert not c.sendable(LINGER - 0.001)
    [batch] = take_all(c, now=LINGER)
    assert batch.reason == "linger"
    assert c.next_deadline(LINGER) is None


def test_deadline_is_set_by_the_oldest_entry_not_the_newest() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "b"), "r2", None, now=0.2)
    [batch] = take_all(c, now=LINGER)
    assert batch.desktop_ids == ("a", "b")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (request("p1", "a"), request("p2", "b")),
        (request("p1", "a", disk_type="ALL"), request("p1", "b", disk_type="SYSTEM_DISK")),
        (request("p1", "a", name="x"), request("p1", "b", name="y")),
    ],
    ids=["project", "disk_type", "snapshot_settings"],
)
def test_different_merge_keys_never_share_a_batch(first: object, second: object) -> None:
    c = core()
    c.submit("t1", first, "r1", None, now=0.0)  # type: ignore[arg-type]
    c.submit("t2", second, "r2", None, now=0.0)  # type: ignore[arg-type]
    batches = take_all(c)
    assert sorted(b.desktop_ids for b in batches) == [("a",), ("b",)]


def test_same_merge_key_requests_share_a_batch() -> None:
    c = core()
    c.submit("t1", request("p1", "a", name="x"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "b", name="x"), "r2", None, now=0.0)
    [batch] = take_all(c)
    assert batch.desktop_ids == ("a", "b")
    assert batch.key == MergeKey("p1", None, request("p1", name="x").system_disk_snapshot, None)


def test_a_request_larger_than_the_room_left_is_split_across_batches() -> None:
    c = core(max_batch=100)
    c.submit("t1", request("p1", *ids(30, "x")), "r1", None, now=0.0)
    c.submit("t2", request("p1", *ids(250)), "r2", None, now=0.1)
    full = take_all(c, now=0.1)
    assert [len(b.desktop_ids) for b in full] == [100, 100]
    [rest] = take_all(c)
    assert len(rest.desktop_ids) == 80


def test_segments_follow_request_boundaries() -> None:
    c = core()
    c.submit("t1", request("p1", "a", "b"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "c"), "r2", None, now=0.0)
    [batch] = take_all(c)
    assert batch.segments == (("a", "b"), ("c",))


def test_a_desktop_pending_in_an_open_batch_is_sent_once_and_both_requests_share_its_job() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "a", "b"), "r2", None, now=0.0)
    [batch] = take_all(c)
    assert batch.desktop_ids == ("a", "b")
    finished = c.complete(batch.id, job_for(batch, "J"), now=1.0)
    assert {f.ticket for f in finished} == {"t1", "t2"}
    by_ticket = {f.ticket: f.result for f in finished}
    assert by_ticket["t1"].jobs == (JobEntry(job_id="J", desktop_ids=("a",)),)
    assert by_ticket["t2"].jobs == (JobEntry(job_id="J", desktop_ids=("a", "b")),)


def test_a_desktop_pending_in_flight_is_not_sent_again() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    [batch] = take_all(c)
    c.submit("t2", request("p1", "a"), "r2", None, now=0.1)
    assert take_all(c) == []
    finished = c.complete(batch.id, job_for(batch), now=1.0)
    assert {f.ticket for f in finished} == {"t1", "t2"}


def test_a_desktop_requested_after_its_outcome_is_sent_again() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    [first] = take_all(c)
    c.complete(first.id, job_for(first), now=0.5)
    c.submit("t2", request("p1", "a"), "r2", None, now=1.0)
    assert [b.desktop_ids for b in take_all(c)] == [("a",)]


def test_the_same_desktop_under_another_merge_key_is_sent_separately() -> None:
    c = core()
    c.submit("t1", request("p1", "a", disk_type="ALL"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "a", disk_type="SYSTEM_DISK"), "r2", None, now=0.0)
    assert len(take_all(c)) == 2


def test_a_request_finishes_only_when_every_batch_covering_it_has_an_outcome() -> None:
    c = core(max_batch=2)
    c.submit("t1", request("p1", "a", "b", "c"), "r1", None, now=0.0)
    [first] = take_all(c, now=0.0)
    [second] = take_all(c)
    assert c.complete(first.id, job_for(first, "J1"), now=1.0) == []
    [finished] = c.complete(second.id, job_for(second, "J2"), now=2.0)
    assert finished.result.status == "accepted"
    assert [j.job_id for j in finished.result.jobs] == ["J1", "J2"]


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [(("job", "job"), "accepted"), (("job", "error"), "partial"), (("error", "error"), "failed")],
)
def test_status_follows_the_outcomes(outcomes: tuple[str, str], status: str) -> None:
    c = core(max_batch=1)
    c.submit("t1", request("p1", "a", "b"), "r1", None, now=0.0)
    batches = take_all(c, now=0.0)
    finished = []
    for batch, kind in zip(batches, outcomes, strict=True):
        finished += c.complete(batch.id, job_for(batch) if kind == "job" else error_for(batch), now=1.0)
    [done] = finished
    assert done.result.status == status
    covered = [d for j in done.result.jobs for d in j.desktop_ids] + [
        d for e in done.result.errors for d in e.desktop_ids
    ]
    assert sorted(covered) == ["a", "b"]


def test_result_echoes_request_id_correlation_id_and_project() -> None:
    c = core()
    c.submit("t1", request("proj-9", "a"), "req-1", "corr-1", now=0.0)
    [batch] = take_all(c)
    [done] = c.complete(batch.id, job_for(batch), now=1_700_000_000.0)
    assert (done.result.request_id, done.result.correlation_id, done.result.project_id) == (
        "req-1",
        "corr-1",
        "proj-9",
    )
    assert done.result.finished_at.tzinfo is not None


def test_an_outcome_that_leaves_out_a_desktop_fails_it_instead_of_hanging() -> None:
    c = core()
    c.submit("t1", request("p1", "a", "b"), "r1", None, now=0.0)
    [batch] = take_all(c)
    [done] = c.complete(batch.id, (JobEntry(job_id="J", desktop_ids=("a",)),), now=1.0)
    assert done.result.status == "partial"
    assert done.result.errors[0].error_code == "SNAPWORKER.NO_OUTCOME"


def test_per_desktop_errors_are_split_per_request() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "b"), "r2", None, now=0.0)
    [batch] = take_all(c)
    outcome = (
        JobEntry(job_id="J", desktop_ids=("a",)),
        ResultError(desktop_ids=("b",), http_status=404, error_code="WKS.0202", error_msg="no", retryable=False),
    )
    results = {f.ticket: f.result for f in c.complete(batch.id, outcome, now=1.0)}
    assert results["t1"].status == "accepted"
    assert results["t2"].status == "failed"
    assert results["t2"].errors[0].desktop_ids == ("b",)


def test_dropped_requests_leave_open_batches() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "b"), "r2", None, now=0.0)
    c.drop(["t1"])
    [batch] = take_all(c)
    assert batch.desktop_ids == ("b",)
    assert c.open_requests == 1


def test_a_dropped_request_does_not_remove_a_desktop_another_request_waits_for() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    c.submit("t2", request("p1", "a"), "r2", None, now=0.0)
    c.drop(["t1"])
    [batch] = take_all(c)
    [done] = c.complete(batch.id, job_for(batch), now=1.0)
    assert done.ticket == "t2"


def test_dropping_everything_empties_the_buffer_and_clears_the_deadline() -> None:
    c = core()
    c.submit("t1", request("p1", "a", "b"), "r1", None, now=0.0)
    c.drop(["t1"])
    assert c.buffered_desktops == 0
    assert c.next_deadline(0.0) is None
    assert not c.sendable(LATER)


def test_a_ticket_cannot_be_opened_twice() -> None:
    c = core()
    c.submit("t1", request("p1", "a"), "r1", None, now=0.0)
    with pytest.raises(ValueError, match="already open"):
        c.submit("t1", request("p1", "b"), "r1", None, now=0.0)


def test_waiting_names_every_request_of_a_batch_once_with_its_desktops() -> None:
    core = BatchingCore(max_batch=10, linger_s=0.0)
    core.submit("a", request("p", "d1", "d2"), "a", None, 0.0)
    core.submit("b", request("p", "d2"), "b", None, 0.0)
    batch = core.take(1.0)
    assert batch is not None
    assert core.waiting(batch) == {"a": ("d1", "d2"), "b": ("d2",)}
    core.complete(batch.id, (), 2.0)
    assert core.waiting(batch) == {}
