"""Requests answered from reconciliation are tracked too, on the real broker and the simulator: a desktop whose
snapshot a lost call made (job_id ``reconciled:<snapshot_id>``) gets its completion from that snapshot's status in
the listing (``creating``, then ``create_success`` or ``create_failed``), its snapshot named."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from snapworker.contract.models import SnapshotCompletion
from snapworker.domain.snapshots import RECONCILED_PREFIX
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe, WorkerProcess
from tests.integration.test_faults import running_worker
from tests.integration.test_tracking import wait_completions

pytestmark = pytest.mark.broker


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """Tracking on with a fast schedule, and the idempotency store that reconciles lost calls."""
    return settings.model_copy(
        update={
            "state_dir": str(tmp_path / "state"),
            "reconcile_delay_s": 0.5,
            "track_jobs": True,
            "track_first_poll_s": 0.2,
            "track_max_poll_s": 0.4,
            "track_deadline_s": 60.0,
            "read_rate_limit": 100.0,
            "read_rate_burst": 20,
        }
    )


def made_by_the_simulator(simulator: Simulator, desktop_id: str) -> str:
    [made] = simulator.snapshots.of_desktop("p1", desktop_id)
    return str(made["snapshot_id"])


def outcomes(completion: SnapshotCompletion) -> dict[str, tuple[str, str]]:
    return {d.desktop_id: (d.job_id, d.outcome) for d in completion.desktops}


async def test_a_request_answered_from_its_record_after_a_crash_completes_succeeded_naming_its_snapshot(
    probe: BrokerProbe, simulator: Simulator, settings: Settings, tmp_path: Path
) -> None:
    simulator.config.job_duration_s = 1.0  # its snapshot is listed creating at first, then create_success
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"], "request_id": "crashed"})
    dying = settings.model_copy(update={"failpoints": "after_api_before_record"})
    async with WorkerProcess(dying, tmp_path / "dying.log") as child:  # the call is made, its outcome never recorded
        assert await child.wait(timeout=30) == -signal.SIGKILL
    async with running_worker(settings):
        [answered] = await probe.wait_for(1, queue=settings.result_queue, timeout=60)
        await wait_completions(probe, 1, timeout=30)
    snapshot = made_by_the_simulator(simulator, "d1")
    assert [(j.job_id, j.desktop_ids) for j in answered.result.jobs] == [(RECONCILED_PREFIX + snapshot, ("d1",))]
    [completion] = probe.completions()
    assert (completion.request_id, completion.status) == ("crashed", "succeeded")
    assert outcomes(completion) == {"d1": (RECONCILED_PREFIX + snapshot, "succeeded")}
    assert simulator.stats()["jobs_created"] == 1  # found, not taken again
    assert simulator.stats()["snapshot_queries"] >= 2  # reconciled, then followed


async def test_a_lost_answer_whose_snapshot_then_fails_completes_partial(
    probe: BrokerProbe, simulator: Simulator, settings: Settings
) -> None:
    simulator.config.drop_after_create_ratio = 1.0  # the job is created, its answer lost: reconciled in flight
    simulator.config.job_duration_s = 2.0  # still creating when reconciled (a failed snapshot would be sent again)
    simulator.config.failing_desktops = frozenset({"d-bad"})
    async with running_worker(settings):
        await probe.publish({"project_id": "p1", "desktop_ids": ["d-good", "d-bad"], "request_id": "lost"})
        await wait_completions(probe, 1, timeout=30)
    [completion] = probe.completions()
    assert completion.status == "partial"
    assert outcomes(completion) == {
        "d-good": (RECONCILED_PREFIX + made_by_the_simulator(simulator, "d-good"), "succeeded"),
        "d-bad": (RECONCILED_PREFIX + made_by_the_simulator(simulator, "d-bad"), "failed"),
    }
    bad = next(d for d in completion.desktops if d.desktop_id == "d-bad")
    assert "create_failed" in (bad.fail_reason or "")
