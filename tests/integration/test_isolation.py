"""Isolation down to the desktop, end to end: a real worker, RabbitMQ and the simulator on loopback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from snapworker.runtime.worker import Worker
from snapworker.simulator.app import Simulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("named", [True, False], ids=["culprit-named", "culprit-unnamed"])
async def test_a_request_with_one_unknown_desktop_gets_partial(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator, named: bool
) -> None:
    await start_worker(linger_ms=1000)  # both requests in one merged batch
    simulator.config.unknown_desktops = frozenset({"ghost"})
    simulator.config.name_culprits = named
    await probe.publish_many(
        [
            {"project_id": "p1", "desktop_ids": ["d1", "d2", "ghost"], "request_id": "mixed"},
            {"project_id": "p1", "desktop_ids": ["d3"], "request_id": "clean"},
        ]
    )
    results = {r.result.request_id: r.result for r in await probe.wait_for(2)}
    mixed = results["mixed"]
    assert mixed.status == "partial"
    assert sorted(d for job in mixed.jobs for d in job.desktop_ids) == ["d1", "d2"]
    [error] = mixed.errors
    assert (error.desktop_ids, error.http_status, error.error_code, error.retryable) == (
        ("ghost",),
        404,
        "WKS.0202",
        False,
    )
    assert error.api_request_id  # the X-Request-Id of the call that refused it
    assert results["clean"].status == "accepted"
    # named: the merged call, then the rest; unnamed: the merged call, split into the two requests, then
    # inside "mixed": [d1] | [d2, ghost], then [d2] | [ghost]
    assert simulator.stats()["calls_total"] == (2 if named else 1 + 2 * 3)
    assert simulator.stats()["distinct_desktops"] == 3  # d1, d2, d3 snapshotted, each once


async def test_a_busy_desktop_is_retried_until_it_is_free(
    start_worker: Callable[..., Awaitable[Worker]], probe: BrokerProbe, simulator: Simulator
) -> None:
    await start_worker(retry_max_time_s=30.0)  # busy desktops are tried again this long at most
    simulator.config.busy_desktops = frozenset({"b1"})
    simulator.config.busy_for_s = 3.0  # free when the sender tries again, 5 s later
    await probe.publish({"project_id": "p1", "desktop_ids": ["d1", "b1"], "request_id": "r"})
    [received] = await probe.wait_for(1, timeout=30)
    result = received.result
    assert result.status == "accepted"
    assert sorted(d for job in result.jobs for d in job.desktop_ids) == ["b1", "d1"]
    assert simulator.stats()["calls_by_status"] == {"200": 2, "409": 1}
