"""One SHUTDOWN_TIMEOUT_S for the whole stop: the drain and then tracking's looks in progress share it (the chaos
soak saw a SIGTERM take twice the timeout: the drain used it up, then the tracker waited as long again)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker

TIMEOUT_S = 2.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Tracking on in the shared settings, so that the probe declares the tracking queues and deletes them."""
    return settings.model_copy(update={"track_jobs": True, "track_first_poll_s": 0.2, "track_max_poll_s": 0.2})


async def test_a_stop_with_a_hung_call_and_a_hung_look_takes_one_shutdown_timeout(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    worker = await start_worker(shutdown_timeout_s=TIMEOUT_S, read_timeout_s=30.0)
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]})
    await probe.wait_for(1, timeout=10)  # accepted: its job is being tracked
    simulator.config.latency_s = 60.0  # from now on every answer hangs: job reads and batch-create alike

    async def a_look_hangs() -> bool:
        return int(simulator.stats()["job_queries"]) > 0

    await probe.wait_until("a job read in progress", a_look_hangs, timeout=10)
    await probe.publish({"project_id": "p1", "desktop_ids": ["d2"]})  # its call hangs: the drain uses its time up

    async def a_call_hangs() -> bool:
        return worker.core.batches_in_flight > 0

    await probe.wait_until("a batch-create call in flight", a_call_hangs, timeout=10)
    started = time.monotonic()
    await asyncio.wait_for(worker.close(), timeout=4 * TIMEOUT_S)
    elapsed = time.monotonic() - started
    simulator.config.latency_s = 0.0
    assert elapsed < 1.5 * TIMEOUT_S  # before: about 2 x TIMEOUT_S
