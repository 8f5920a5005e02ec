"""Recovery against the API's snapshot listing, on the real broker and the simulator (which answers in the shape
of Huawei's SDK): a call whose answer was lost is never sent again before its snapshots were listed, and a
request is never answered with another request's snapshot."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from snapworker.contract.models import JobEntry, SnapshotResult
from snapworker.domain.snapshots import RECONCILED_PREFIX
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe, WorkerProcess
from tests.integration.test_faults import running_worker

pytestmark = pytest.mark.broker

NIGHTLY = {"name": "nightly"}


def snapshot_of(result: SnapshotResult, desktop_id: str, simulator: Simulator) -> str:
    """The snapshot the result names for ``desktop_id``: its reconciled snapshot, or the one its job made."""
    [job] = [j for j in result.jobs if desktop_id in j.desktop_ids]
    if job.job_id.startswith(RECONCILED_PREFIX):
        return job.job_id.removeprefix(RECONCILED_PREFIX)
    [made] = [
        s for s in simulator.snapshots.of_desktop(result.project_id or "", desktop_id) if s["job_id"] == job.job_id
    ]
    return str(made["snapshot_id"])


async def test_a_call_processed_then_cut_off_is_answered_accepted_from_its_snapshots_without_a_second(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    simulator.config.drop_after_create_ratio = 1.0  # every call: job created, then the connection closed unanswered
    state = settings.model_copy(update={"state_dir": str(tmp_path / "state")})
    async with running_worker(state):
        await probe.publish({"project_id": "p1", "desktop_ids": ["d1", "d2"], "request_id": "cut-1"})
        [received] = await probe.wait_for(1, timeout=30)
    result = received.result
    assert simulator.stats()["dropped_answers"] == 1
    assert simulator.snapshots.repeated() == {}
    assert result.status == "accepted"
    assert all(job.job_id.startswith(RECONCILED_PREFIX) for job in result.jobs)
    made = {d: s["snapshot_id"] for d in ("d1", "d2") for s in simulator.snapshots.of_desktop("p1", d)}
    assert {d: snapshot_of(result, d, simulator) for d in ("d1", "d2")} == made


async def test_answers_lost_on_a_third_of_the_calls_cost_no_repeated_snapshot_and_no_failed_request(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    simulator.config.drop_after_create_ratio = 0.3
    # batches of 20: many calls, so many answers to lose
    state = settings.model_copy(
        update={"state_dir": str(tmp_path / "state"), "reconcile_delay_s": 0.5, "max_batch": 20, "prefetch": 1000}
    )
    bodies = [{"project_id": f"p{i % 8}", "desktop_ids": [f"d{i}"], "request_id": f"r{i}"} for i in range(1000)]
    async with running_worker(state):
        await probe.publish_many(bodies)
        answered = await probe.wait_for_requests([str(b["request_id"]) for b in bodies], timeout=90)
    stats = simulator.stats()
    print(f"\n{stats['dropped_answers']} answers dropped of {stats['jobs_created']} jobs; {len(answered)} answered")
    assert stats["dropped_answers"] >= 5
    assert simulator.snapshots.repeated() == {}
    assert {r.status for r in probe.results()} == {"accepted"}
    assert probe.duplicates() == 0


@pytest.mark.parametrize("dies", ["after_intent_before_api", "after_api_before_record"])
async def test_two_requests_for_one_desktop_and_name_are_never_answered_with_each_others_snapshot(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path, dies: str
) -> None:
    state = settings.model_copy(update={"state_dir": str(tmp_path / "state"), "reconcile_delay_s": 0.5})
    first: dict[str, Any] = {"project_id": "p1", "desktop_ids": ["d1"], "request_id": "first"}
    other: dict[str, Any] = {"project_id": "p1", "desktop_ids": ["d1"], "request_id": "other"}
    first["system_disk_snapshot"] = other["system_disk_snapshot"] = NIGHTLY
    # The first request's worker dies at ``dies``: before its call, or after it made the snapshot.
    await probe.publish(first)
    async with WorkerProcess(state.model_copy(update={"failpoints": dies}), tmp_path / "dying.log") as child:
        assert await child.wait(timeout=30) == -signal.SIGKILL
    # The other request, for the same desktop and name, is sent and answered; then the first is reconciled.
    await probe.publish(other)
    async with running_worker(state):
        await probe.wait_for_requests(["first", "other"], timeout=30)
    results = {r.request_id: r for r in probe.results()}
    assert {r.status for r in results.values()} == {"accepted"}
    mine, theirs = (snapshot_of(results[r], "d1", simulator) for r in ("first", "other"))
    assert mine != theirs
    expected_jobs = 2  # each request's own snapshot, taken once
    assert len(simulator.snapshots.of_desktop("p1", "d1")) == expected_jobs
    if dies == "after_api_before_record":  # the first call made its snapshot: it is found, not taken again
        assert isinstance(results["first"].jobs[0], JobEntry)
        assert results["first"].jobs[0].job_id.startswith(RECONCILED_PREFIX)
