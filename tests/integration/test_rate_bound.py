"""The worker under a binding rate limit, on the real broker and the simulator: full calls, no failed requests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from snapworker.runtime.worker import Worker
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


async def test_under_a_binding_rate_a_backlog_goes_out_in_full_batches(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    # 300 single-desktop requests, round-robin over 3 projects, published before the worker starts
    await probe.publish_many([{"project_id": f"p{i % 3}", "desktop_ids": [f"d{i}"]} for i in range(300)])
    # one queue: partitioned, each partition's share of the window (PREFETCH / PARTITIONS = 62) is below MAX_BATCH
    worker = await start_worker(rate_limit=1.0, rate_burst=1, partitions=0)
    results = await probe.wait_for(300, timeout=30)
    assert {r.result.status for r in results} == {"accepted"}
    assert simulator.stats()["calls_total"] == 3  # the minimum: one call of 100 per project
    assert worker.stats.batch_sizes == {100: 3}


async def test_a_lone_request_goes_out_at_linger_when_calls_are_free(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    worker = await start_worker(rate_limit=1.0, rate_burst=5, linger_ms=50, hold_max_ms=60_000)
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1"]})
    [received] = await probe.wait_for(1, timeout=10)  # far below HOLD_MAX_MS: nothing held it
    assert received.result.status == "accepted"
    assert worker.stats.batches_by_reason == {"linger": 1}


async def test_throttling_never_fails_a_request(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    simulator.config.rate_per_second = 2  # the API allows 2 calls a second; the worker is set to 20
    await start_worker(rate_limit=20.0, rate_burst=10, max_batch=5, retry_max_tries=1)
    await probe.publish_many([{"project_id": f"p{i % 6}", "desktop_ids": [f"d{i}"]} for i in range(60)])
    results = await probe.wait_for(60, timeout=90)
    assert {r.result.status for r in results} == {"accepted"}
    assert simulator.stats()["calls_by_status"].get("429", 0) > 0


async def test_the_window_widens_as_more_merge_keys_are_active(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    await probe.publish_many([{"project_id": f"p{i % 40}", "desktop_ids": [f"d{i}"]} for i in range(800)])
    # 40 keys of 10-desktop batches want a window of 2 x 10 x 40 = 800 requests, 8 times PREFETCH
    # one queue: the widening is judged on the whole window, which partition shares of 6 never fill
    worker = await start_worker(prefetch=100, max_batch=10, rate_limit=20.0, rate_burst=5, partitions=0)
    results = await probe.wait_for(800, timeout=60)
    assert {r.result.status for r in results} == {"accepted"}
    assert worker.core.window is not None
    assert worker.core.window >= 800
    assert simulator.stats()["calls_total"] == 80  # every call full
