"""A worker with ACCOUNTS_FILE: a listed project is served with its account's endpoint and credential; a
project of no account (and no default) fails without a call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.conftest import SIM_TOKEN
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


async def test_a_worker_routes_each_project_to_its_account(
    settings: Settings, probe: BrokerProbe, simulator: Simulator, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[account]]\nname = "sim"\nprojects = ["p-sim"]\nendpoint = "{simulator.url}"\nauth_token = "{SIM_TOKEN}"\n'
    )
    # the worker's own credential would be refused: only the account's may reach the simulator
    routed = settings.model_copy(update={"accounts_file": str(accounts), "auth_token": None})
    worker = Worker(routed)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), timeout=10)
        await probe.publish({"project_id": "p-sim", "desktop_ids": ["d1"], "request_id": "routed"})
        await probe.publish({"project_id": "p-nowhere", "desktop_ids": ["d2"], "request_id": "unrouted"})
        received = await probe.wait_for(2)
    finally:
        await worker.close()
        await asyncio.wait_for(task, timeout=30)
    by_id = {r.result.request_id: r.result for r in received}
    assert by_id["routed"].status == "accepted"
    assert by_id["unrouted"].status == "failed"
    assert by_id["unrouted"].errors[0].error_code == "SNAPWORKER.NO_ACCOUNT"
