"""A running worker's tracking metrics against the simulator and a real RabbitMQ: what it started, read, completed
and finished, and the lag from each request's result to its completion."""

from __future__ import annotations

import pytest

from snapworker.ops.metrics import build_registry
from snapworker.runtime.worker import Worker
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe
from tests.integration.test_tracking import request, settings, wait_completions

__all__ = ["settings"]  # the fixture: tracking on, a fast schedule

pytestmark = pytest.mark.broker


async def test_a_worker_that_completed_three_requests_shows_them_in_its_tracking_metrics(
    simulator: Simulator, probe: BrokerProbe, worker: Worker
) -> None:
    simulator.config.job_duration_s = 0.5
    registry, _ = build_registry(worker)
    for i in range(3):
        await probe.publish(request(f"r{i}", f"desk-{i}"))
    await wait_completions(probe, 3)

    async def finished() -> bool:  # the unit counts as finished once its message is acked, after the confirm
        started = registry.get_sample_value("snapworker_tracking_units_started_total")
        return started == registry.get_sample_value("snapworker_tracking_units_finished_total")

    await probe.wait_until("every unit started finished", finished, timeout=10)
    assert registry.get_sample_value("snapworker_tracking_completions_total", {"status": "succeeded"}) == 3
    assert registry.get_sample_value("snapworker_tracking_completion_lag_seconds_count") == 3
    assert (registry.get_sample_value("snapworker_tracking_job_reads_total", {"outcome": "ended"}) or 0) >= 1
    assert registry.get_sample_value("snapworker_tracking_units_held") == 0
    assert registry.get_sample_value("snapworker_tracking_units_unpublished") == 0
