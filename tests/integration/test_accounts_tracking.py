"""Job tracking under ACCOUNTS_FILE, against the simulator and a real RabbitMQ: a worker tracks the jobs of every
account, each read with its own account's token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from tests.cloud.test_account_job_reads import TOKENS, TokenSimulator
from tests.integration.harness import BrokerProbe

pytestmark = pytest.mark.broker


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared test settings with tracking on and a fast schedule (its queues are this test's own)."""
    update = {"track_jobs": True, "track_first_poll_s": 0.2, "track_max_poll_s": 0.4, "track_deadline_s": 20.0}
    return settings.model_copy(update=update | {"read_rate_limit": 100.0, "read_rate_burst": 20})


@pytest.fixture
async def sim() -> AsyncIterator[TokenSimulator]:
    made = TokenSimulator()
    made.sim.config.job_duration_s = 0.3
    await made.sim.start(host="127.0.0.1", port=0)
    try:
        yield made
    finally:
        await made.sim.stop()


async def test_a_worker_with_two_accounts_tracks_the_jobs_of_both_each_read_with_its_accounts_token(
    settings: Settings, probe: BrokerProbe, sim: TokenSimulator, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        "".join(
            f'[[account]]\nname = "{project}"\nprojects = ["{project}"]\nendpoint = "{sim.sim.url}"\n'
            f'auth_token = "{token}"\n'
            for project, token in TOKENS.items()
        )
    )
    # the worker's own credential is none: only the accounts' tokens reach the simulator
    routed = settings.model_copy(update={"accounts_file": str(accounts), "auth_token": None})
    worker = Worker(routed)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.consuming.wait(), timeout=10)
        for project in TOKENS:
            await probe.publish({"project_id": project, "desktop_ids": [f"desk-{project}"], "request_id": project})

        async def both_completed() -> bool:
            return len(probe.completions()) >= 2

        await probe.wait_until("2 completions", both_completed, timeout=20.0)
    finally:
        await worker.close()
        await asyncio.wait_for(task, timeout=30)
    assert {c.request_id: c.status for c in probe.completions()} == dict.fromkeys(TOKENS, "succeeded")
    assert {project for project, _ in sim.job_reads} == set(TOKENS)
    assert all(token == TOKENS[project] for project, token in sim.job_reads)
