"""Durable waits under faults, on quorum tracking queues (the default), the real broker and the simulator: a worker
killed (SIGKILL) while tracking, and a broker restart while tracking messages wait in the wait queues, lose no
completion. A completion may come twice (the same ``message_id`` both times), never not at all.

The broker-restart test stops and starts the local RabbitMQ app (``rabbitmqctl``, as in ``test_faults.py``), so
it disturbs anything else on that broker for a few seconds; ``SNAPWORKER_TEST_NO_BROKER_RESTART=1`` skips it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tracking.topology import QUORUM, schedule_of, wait_queue
from tests.integration.harness import BrokerProbe, WorkerProcess
from tests.integration.test_faults import _rabbitmqctl, rabbitmqctl

pytestmark = pytest.mark.broker

__all__ = ["rabbitmqctl"]  # the fixture

PROJECT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with tracking on quorum queues and a fast schedule (this test's own queues)."""
    return settings.model_copy(
        update={
            "track_jobs": True,
            "tracking_queue_type": "quorum",
            "track_first_poll_s": 1.0,
            "track_max_poll_s": 2.0,
            "track_deadline_s": 60.0,
            "read_rate_limit": 100.0,
            "read_rate_burst": 20,
        }
    )


def request(request_id: str) -> dict[str, object]:
    return {"project_id": PROJECT, "desktop_ids": [f"desk-{request_id}"], "request_id": request_id}


async def every_request_completed(probe: BrokerProbe, ids: list[str], *, timeout: float) -> dict[str, set[str]]:
    """Once each of ``ids`` has a completion: the ``message_id`` of each request's completions."""

    async def all_there() -> bool:
        return {c.request_id for c in probe.completions()} >= set(ids)

    await probe.wait_until(f"completions of {len(ids)} requests", all_there, timeout=timeout)
    ids_of: dict[str, set[str]] = defaultdict(set)
    for received in probe.received:
        if received.type == "snapworker.completion":
            ids_of[received.completion.request_id].add(received.message_id or "")
    return ids_of


async def waiting(probe: BrokerProbe) -> int:
    """Tracking messages in the wait queues."""
    s = probe.settings
    return sum([await probe.queue_depth(wait_queue(s, tier)) for tier in schedule_of(s).tiers()])


async def test_a_worker_killed_while_tracking_on_quorum_queues_loses_no_completion(
    simulator: Simulator,
    probe: BrokerProbe,
    settings: Settings,
    start_worker: Callable[..., Awaitable[Worker]],
    tmp_path: Path,
) -> None:
    await probe.channel.declare_queue(settings.tracking_queue, durable=True, arguments=QUORUM)  # quorum, as declared
    simulator.config.job_duration_s = 4.0
    ids = [f"r{i}" for i in range(8)]
    async with WorkerProcess(settings, tmp_path / "worker.log") as child:
        await probe.publish_many([request(i) for i in ids])
        await probe.wait_for(len(ids), queue=settings.result_queue, timeout=20)
        await asyncio.sleep(1.5)  # the child has looked at the running jobs: units move between the queues
        assert simulator.stats()["job_queries"] > 0, child.log()
        child.send_signal(signal.SIGKILL)
        await child.wait(timeout=10)
    await start_worker()
    completed = await every_request_completed(probe, ids, timeout=30)
    assert set(completed) == set(ids)
    assert all(len(message_ids) == 1 for message_ids in completed.values())  # a duplicate is recognisable
    assert {c.status for c in probe.completions()} == {"succeeded"}


async def test_a_broker_restart_while_units_wait_loses_no_completion(
    simulator: Simulator,
    probe: BrokerProbe,
    settings: Settings,
    start_worker: Callable[..., Awaitable[Worker]],
    rabbitmqctl: None,
) -> None:
    # (rabbitmqctl comes last: its teardown starts the app again before the probe's deletes the queues)
    if os.environ.get("SNAPWORKER_TEST_NO_BROKER_RESTART"):
        pytest.skip("SNAPWORKER_TEST_NO_BROKER_RESTART is set: the broker is shared (benchmarks running)")
    simulator.config.job_duration_s = 8.0  # still running after the restart
    ids = [f"r{i}" for i in range(8)]
    await start_worker()
    await probe.publish_many([request(i) for i in ids])
    await probe.wait_for(len(ids), queue=settings.result_queue, timeout=20)

    async def units_wait() -> bool:
        return await waiting(probe) > 0

    await probe.wait_until("tracking messages in the wait queues", units_wait, timeout=10)
    await _rabbitmqctl("stop_app")
    await _rabbitmqctl("start_app")
    await probe.reconnect()
    completed = await every_request_completed(probe, ids, timeout=45)
    assert set(completed) == set(ids)
    assert all(len(message_ids) == 1 for message_ids in completed.values())
    assert {c.status for c in probe.completions()} == {"succeeded"}
