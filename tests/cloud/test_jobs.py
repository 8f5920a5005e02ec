"""The job reader against the simulator: statuses, sub-job pages, and a read budget apart from batch-create's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.jobs import JobReader, job_not_found
from snapworker.cloud.limiter import Grant, RateLimiter
from snapworker.domain.jobs import classify
from snapworker.domain.keys import MergeKey
from snapworker.errors import ApiError
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.conftest import SIM_TOKEN

PROJECT = "proj-1"
KEY = MergeKey(PROJECT, None, None, None)


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[WorkspaceClient]:
    settings = Settings(
        api_url=simulator.url, auth_token=SIM_TOKEN, retry_max_tries=1, read_rate_limit=100.0, read_rate_burst=10
    )
    async with WorkspaceClient(settings) as c:
        yield c


def reader(client: WorkspaceClient) -> JobReader:
    return JobReader(client)


@pytest.mark.parametrize(
    ("status", "phase"),
    [
        ("SUCCESS", "succeeded"),
        ("COMPLETE", "succeeded"),
        ("FAIL", "failed"),
        ("FAILED", "failed"),
        ("RUNNING", "running"),
        ("WAITING", "running"),
        ("NEW_STATUS", "running"),
        (None, "running"),
    ],
)
def test_statuses_are_read_as_the_fact_sheet_says(status: str | None, phase: str) -> None:
    assert classify(status) == phase


async def test_a_running_job_is_read_with_one_call(simulator: Simulator, client: WorkspaceClient) -> None:
    simulator.config.job_duration_s, simulator.config.sub_jobs_inline = 60.0, 2
    created = await client.batch_create(KEY, [f"d-{i}" for i in range(5)])
    jobs = reader(client)
    view = await jobs.read(PROJECT, created.job_id)
    assert (view.phase, len(view.sub_jobs), view.complete, jobs.reads) == ("running", 2, False, 1)


async def test_an_ended_job_reads_every_sub_job_page(simulator: Simulator, client: WorkspaceClient) -> None:
    simulator.config.sub_jobs_inline = 2
    simulator.config.failing_desktops = frozenset({"d-249"})
    desktops = [f"d-{i}" for i in range(150, 250)]
    created = await client.batch_create(KEY, desktops)
    jobs = reader(client)
    view = await jobs.read(PROJECT, created.job_id)
    assert view.complete
    assert set(view.sub_jobs) == set(desktops)
    assert view.sub_jobs["d-249"].status == "FAIL"
    assert jobs.reads == 1 + 1  # the job, then one page of up to 100 for the 98 it did not list
    assert simulator.stats()["sub_job_queries"] == 1


async def test_a_forgotten_job_is_recognised(client: WorkspaceClient) -> None:
    with pytest.raises(ApiError) as caught:
        await reader(client).read(PROJECT, "no-such-job")
    assert job_not_found(caught.value)


class CountingLimiter(RateLimiter):
    def __init__(self) -> None:
        super().__init__(100.0, 10, 4)
        self.grants = 0

    async def acquire(self, project_id: str) -> Grant:
        self.grants += 1
        return await super().acquire(project_id)


async def test_reads_spend_their_own_budget_never_batch_create_s(simulator: Simulator) -> None:
    writes, reads = CountingLimiter(), CountingLimiter()
    settings = Settings(api_url=simulator.url, auth_token=SIM_TOKEN)
    async with WorkspaceClient(settings, limiter=writes) as client:
        created = await client.batch_create(KEY, ["d-1"])
        await JobReader(client, limiter=reads).read(PROJECT, created.job_id)
    assert (writes.grants, reads.grants) == (1, 1)
