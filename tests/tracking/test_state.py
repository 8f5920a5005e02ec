"""The tracking decisions, sans I/O: outcomes from job reads, the deadline, completions and the schedule."""

from __future__ import annotations

import ast
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapworker.contract.models import JobEntry, SnapshotResult
from snapworker.domain import jobs as views
from snapworker.domain.jobs import JobView, SubJobView
from snapworker.domain.snapshots import SnapshotView
from snapworker.tracking import snapshot_status, state
from snapworker.tracking.state import Schedule, TrackingUnit, start_unit

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
PROJECT = "p1"


def result(request_id: str, *jobs: tuple[str, tuple[str, ...]]) -> SnapshotResult:
    return SnapshotResult(
        request_id=request_id,
        project_id=PROJECT,
        status="accepted",
        finished_at=T0,
        jobs=tuple(JobEntry(job_id=j, desktop_ids=d) for j, d in jobs),
    )


def view(job_id: str, status: str, subs: dict[str, str], *, complete: bool = True, end: str | None = None) -> JobView:
    return JobView(
        job_id=job_id,
        status=status,
        end_time=end,
        error_code=None,
        fail_reason=None,
        sub_jobs={
            d: SubJobView(d, s, "WKS.0005" if s == "FAIL" else None, "broke" if s == "FAIL" else None)
            for d, s in subs.items()
        },
        complete=complete,
    )


def unit(*results: SnapshotResult) -> TrackingUnit:
    made = start_unit([(r, None) for r in results], T0)
    assert made is not None
    return made


def test_a_result_without_jobs_starts_no_tracking() -> None:
    failed = SnapshotResult(request_id="r", project_id=PROJECT, status="failed", finished_at=T0)
    assert start_unit([(failed, None)], T0) is None


def test_one_job_shared_by_two_requests_is_read_once() -> None:
    u = unit(result("r1", ("j1", ("d1",))), result("r2", ("j1", ("d2",)), ("j2", ("d3",))))
    assert u.jobs_to_read() == {"j1": PROJECT, "j2": PROJECT}


def test_requests_without_a_destination_leave_the_unit_with_the_jobs_only_they_waited_for() -> None:
    made = start_unit(
        [(result("r-none", ("j1", ("d1",)), ("j2", ("d2",))), None), (result("r-reply", ("j2", ("d3",))), "replies")],
        T0,
    )
    assert made is not None
    assert made.forget_unaddressed(completion_queue="") == 1
    assert [r.request_id for r in made.requests] == ["r-reply"]
    assert made.jobs_to_read() == {"j2": PROJECT}


def test_a_request_completes_when_all_its_jobs_ended_and_only_then() -> None:
    u = unit(result("r1", ("j1", ("d1",)), ("j2", ("d2",))))
    u.observe(view("j1", "SUCCESS", {"d1": "SUCCESS"}), T0)
    assert u.take_completions(T0) == []
    u.observe(view("j2", "COMPLETE", {"d2": "SUCCESS"}), T0)
    [(completion, _)] = u.take_completions(T0)
    assert completion.status == "succeeded"
    assert u.requests == []
    assert u.jobs_to_read() == {}


def test_a_failed_sub_job_makes_the_request_partial_with_its_error() -> None:
    u = unit(result("r1", ("j1", ("d1", "d2"))))
    u.observe(view("j1", "FAIL", {"d1": "SUCCESS", "d2": "FAIL"}, end="2026-12-01T02:05:00.000Z"), T0)
    [(completion, _)] = u.take_completions(T0)
    assert completion.status == "partial"
    bad = next(d for d in completion.desktops if d.desktop_id == "d2")
    assert (bad.outcome, bad.error_code, bad.fail_reason) == ("failed", "WKS.0005", "broke")
    assert bad.finished_at == T0 + timedelta(minutes=5)  # the job's end_time, not when it was seen


def test_every_desktop_failing_is_failed() -> None:
    u = unit(result("r1", ("j1", ("d1",))))
    u.observe(view("j1", "FAILED", {"d1": "FAILED"}), T0)
    assert u.take_completions(T0)[0][0].status == "failed"


def test_an_unknown_status_keeps_waiting() -> None:
    u = unit(result("r1", ("j1", ("d1",))))
    u.observe(view("j1", "PAUSED_BY_SOMEONE", {"d1": "SOMETHING_NEW"}), T0)
    assert u.take_completions(T0) == []
    assert u.requests[0].desktops[0].sub_job_status == "SOMETHING_NEW"


def test_past_the_deadline_what_still_runs_is_unknown() -> None:
    u = unit(result("r1", ("j1", ("d1", "d2"))))
    u.observe(view("j1", "RUNNING", {"d1": "SUCCESS", "d2": "RUNNING"}), T0)
    assert not u.expire(T0 + timedelta(seconds=59), deadline_s=60)
    assert u.expire(T0 + timedelta(seconds=60), deadline_s=60)
    [(completion, _)] = u.take_completions(T0 + timedelta(seconds=60))
    assert completion.status == "unknown"
    assert [d.outcome for d in completion.desktops] == ["succeeded", "unknown"]


def test_a_job_that_ended_without_listing_a_desktop_is_unknown_at_once() -> None:
    u = unit(result("r1", ("j1", ("d1", "d2"))))
    u.observe(view("j1", "SUCCESS", {"d1": "SUCCESS"}), T0)
    [(completion, _)] = u.take_completions(T0)
    assert [d.outcome for d in completion.desktops] == ["succeeded", "unknown"]


def test_an_ended_job_whose_pages_were_not_all_read_keeps_waiting() -> None:
    u = unit(result("r1", ("j1", ("d1", "d2"))))
    u.observe(view("j1", "SUCCESS", {"d1": "SUCCESS"}, complete=False), T0)
    assert u.take_completions(T0) == []


def test_a_job_the_api_forgot_is_unknown() -> None:
    u = unit(result("r1", ("j1", ("d1",))))
    u.job_lost("j1", T0, "gone")
    [(completion, _)] = u.take_completions(T0)
    assert (completion.status, completion.desktops[0].fail_reason) == ("unknown", "gone")


def test_the_unit_survives_its_message_body() -> None:
    u = unit(result("r1", ("j1", ("d1",))))
    u.observe(view("j1", "RUNNING", {"d1": "RUNNING"}), T0)
    assert TrackingUnit.model_validate_json(u.model_dump_json()) == u


def test_the_schedule_backs_off_to_its_cap_with_jitter_below_the_base() -> None:
    schedule = Schedule(first_s=10, max_s=60, deadline_s=3600)
    u = unit(result("r1", ("j1", ("d1",))))
    delays = []
    for polls in range(5):
        u.polls = polls
        delays.append(schedule.delay(u, T0, random.Random(polls)))
    for delay, base in zip(delays, (10, 20, 40, 60, 60), strict=True):
        assert base * 0.8 <= delay <= base
    assert schedule.tiers() == (10, 20, 40, 60)


def test_the_schedule_never_waits_past_the_deadline() -> None:
    schedule = Schedule(first_s=10, max_s=60, deadline_s=100)
    u = unit(result("r1", ("j1", ("d1",))))
    u.polls = 9
    assert schedule.delay(u, T0 + timedelta(seconds=95), random.Random(1)) == pytest.approx(5)
    assert schedule.delay(u, T0 + timedelta(seconds=101), random.Random(1)) == 0


@pytest.mark.parametrize(("delay", "tier"), [(0.0, 10), (10, 10), (10.5, 20), (55, 60), (600, 60)])
def test_a_delay_waits_in_the_smallest_tier_that_holds_it(delay: float, tier: float) -> None:
    assert Schedule(first_s=10, max_s=60, deadline_s=3600).tier_for(delay) == tier


@pytest.mark.parametrize("module", [state, snapshot_status, views])
def test_the_decisions_import_no_io(module: object) -> None:
    tree = ast.parse(Path(getattr(module, "__file__", "")).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    io = {"asyncio", "time", "aiohttp", "aio_pika", "aiormq", "snapworker.cloud.jobs", "snapworker.cloud.client"}
    assert imported.isdisjoint(io)


# -- desktops answered from reconciliation (job_id reconciled:<snapshot_id>): followed by their snapshot's status


def snap(snapshot_id: str, desktop: str, status: str | None) -> SnapshotView:
    return SnapshotView(snapshot_id, "desk-nightly-20261201020000", desktop, None, True, status, "snapworker:a", None)


def test_a_desktop_found_by_reconciliation_reads_no_job_and_waits_for_its_snapshot() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",)), ("j2", ("d2",))))
    u.observe(view("j2", "SUCCESS", {"d2": "SUCCESS"}), T0)
    assert u.jobs_to_read() == {}
    assert u.snapshots_to_read() == {PROJECT: ["d1"]}
    assert u.take_completions(T0) == []


def test_its_snapshot_created_makes_it_succeeded_with_the_snapshot_named() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(
        PROJECT, {"d1": [snap("other", "d1", "create_failed"), snap("snap-1", "d1", "create_success")]}, T0
    )
    [(completion, _)] = u.take_completions(T0)
    assert completion.status == "succeeded"
    assert [(d.desktop_id, d.job_id, d.outcome, d.fail_reason) for d in completion.desktops] == [
        ("d1", "reconciled:snap-1", "succeeded", None)
    ]


def test_its_snapshot_failed_makes_it_failed_saying_so() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-1", "d1", "create_failed")]}, T0)
    [(completion, _)] = u.take_completions(T0)
    assert completion.status == "failed"
    assert "snap-1" in (completion.desktops[0].fail_reason or "")
    assert "create_failed" in (completion.desktops[0].fail_reason or "")


def test_its_snapshot_still_creating_keeps_it_waiting() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-1", "d1", "creating")]}, T0)
    assert u.take_completions(T0) == []
    assert u.snapshots_to_read() == {PROJECT: ["d1"]}


def test_a_snapshot_status_nobody_documented_keeps_it_waiting() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-1", "d1", "frozen_by_someone")]}, T0)
    assert u.take_completions(T0) == []


def test_a_snapshot_restored_from_since_was_created() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-1", "d1", "restoring")]}, T0)
    assert u.take_completions(T0)[0][0].status == "succeeded"


def test_its_snapshot_missing_from_the_listing_makes_it_unknown_at_once() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("another", "d1", "create_success")]}, T0 + timedelta(seconds=30))
    [(completion, _)] = u.take_completions(T0 + timedelta(seconds=30))
    [d1] = completion.desktops
    assert (completion.status, d1.outcome, d1.finished_at) == ("unknown", "unknown", T0 + timedelta(seconds=30))
    assert "snap-1 is not listed" in (d1.fail_reason or "")


def test_a_listing_that_did_not_ask_about_the_desktop_leaves_it_waiting() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d2": []}, T0)
    u.observe_snapshots("another-project", {"d1": []}, T0)
    assert u.take_completions(T0) == []


def test_one_desktop_in_two_requests_is_listed_once_and_each_gets_its_own_snapshot() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))), result("r2", ("reconciled:snap-2", ("d1",))))
    assert u.snapshots_to_read() == {PROJECT: ["d1"]}
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-2", "d1", "create_success"), snap("snap-1", "d1", "creating")]}, T0)
    [(completion, _)] = u.take_completions(T0)
    assert (completion.request_id, completion.status) == ("r2", "succeeded")
    assert u.snapshots_to_read() == {PROJECT: ["d1"]}


def test_its_snapshot_is_looked_for_a_day_before_the_unit_began() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    assert u.snapshots_since() == T0 - timedelta(days=1)


def test_a_snapshot_still_creating_past_the_deadline_is_unknown() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    u.observe_snapshots(PROJECT, {"d1": [snap("snap-1", "d1", "creating")]}, T0)
    assert u.expire(T0 + timedelta(seconds=60), deadline_s=60)
    [(completion, _)] = u.take_completions(T0 + timedelta(seconds=60))
    assert completion.desktops[0].outcome == "unknown"


def test_a_unit_waiting_for_a_snapshot_survives_its_message_body() -> None:
    u = unit(result("r1", ("reconciled:snap-1", ("d1",))))
    assert TrackingUnit.model_validate_json(u.model_dump_json()).snapshots_to_read() == {PROJECT: ["d1"]}
