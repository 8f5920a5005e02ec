"""Job reads under ACCOUNTS_FILE: each job is read with its project's account (its endpoint, token and read
budget); a project no account serves fails its read before anything is sent, and tracking looks again later."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from snapworker.cloud.accounts import Account, AccountRouter, NoAccountForProject, load_accounts
from snapworker.cloud.jobs import JobReader
from snapworker.contract.models import JobEntry, SnapshotResult
from snapworker.domain.keys import MergeKey
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.simulator.state import SimConfig
from snapworker.tracking import tracker_for
from snapworker.tracking.loop import Tracker
from snapworker.tracking.state import start_unit

TOKENS = {"p-eu": "token-eu", "p-asia": "token-asia"}


class TokenSimulator:
    """A simulator accepting every account's token that notes, for each job read, its project and token."""

    def __init__(self) -> None:
        self.sim = Simulator(SimConfig(tokens=frozenset(TOKENS.values())))
        self.job_reads: list[tuple[str, str | None]] = []

        @web.middleware
        async def note(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            parts = request.path.split("/")
            if request.method == "GET" and len(parts) > 3 and parts[3] == "workspace-jobs":
                self.job_reads.append((parts[2], request.headers.get("X-Auth-Token")))
            return await handler(request)

        self.sim.app.middlewares.insert(0, note)


@pytest.fixture
async def sim() -> AsyncIterator[TokenSimulator]:
    made = TokenSimulator()
    await made.sim.start(host="127.0.0.1", port=0)
    try:
        yield made
    finally:
        await made.sim.stop()


def _settings(url: str, **kw: object) -> Settings:
    values: dict[str, object] = {"api_url": url, "retry_max_tries": 1, "read_rate_limit": 100.0, "read_rate_burst": 10}
    return Settings(**(values | kw))  # type: ignore[arg-type]


@pytest.fixture
async def router(sim: TokenSimulator) -> AsyncIterator[AccountRouter]:
    base = _settings(sim.sim.url, track_jobs=True)
    accounts = [
        Account(name, frozenset({project}), _settings(sim.sim.url, auth_token=TOKENS[project]))
        for name, project in (("europe", "p-eu"), ("asia", "p-asia"))
    ]
    made = AccountRouter(base, accounts, None)
    try:
        yield made
    finally:
        await made.close()


async def _job_of(router: AccountRouter, project: str) -> str:
    created = await router.batch_create(MergeKey(project, None, None, None), [f"desk-{project}"])
    return created.job_id


async def test_each_job_read_carries_its_own_accounts_token(sim: TokenSimulator, router: AccountRouter) -> None:
    jobs = {project: await _job_of(router, project) for project in TOKENS}
    reader = JobReader(router)
    for project, job_id in jobs.items():
        view = await reader.read(project, job_id)
        assert view.job_id == job_id
    assert sorted(sim.job_reads) == sorted(TOKENS.items())
    assert reader.reads == 2


async def test_each_account_reads_under_its_own_read_budget(sim: TokenSimulator) -> None:
    # europe may read 5/s, one at a time (paced at 4.5/s: a second read waits ~0.22 s); asia 100/s
    europe = _settings(sim.sim.url, auth_token=TOKENS["p-eu"], read_rate_limit=5.0, read_rate_burst=1)
    asia = _settings(sim.sim.url, auth_token=TOKENS["p-asia"])
    router = AccountRouter(
        _settings(sim.sim.url),
        [Account("europe", frozenset({"p-eu"}), europe), Account("asia", frozenset({"p-asia"}), asia)],
        None,
    )
    try:
        jobs = {project: await _job_of(router, project) for project in TOKENS}
        reader = JobReader(router)
        for project in ("p-eu", "p-asia", "p-eu", "p-asia"):
            await reader.read(project, jobs[project])
        assert router.read_limiter("p-eu").wait_seconds_total > 0.15
        assert router.read_limiter("p-asia").wait_seconds_total < 0.05
    finally:
        await router.close()


async def test_a_job_of_a_project_no_account_serves_fails_unsent_and_uncounted(
    sim: TokenSimulator, router: AccountRouter
) -> None:
    reader = JobReader(router)
    with pytest.raises(NoAccountForProject):
        await reader.read("p-nowhere", "job-1")
    assert (reader.reads, sim.job_reads) == (0, [])


def test_tracking_is_on_under_accounts_file(router: AccountRouter) -> None:
    assert isinstance(tracker_for(Settings(track_jobs=True), router), Tracker)


async def test_tracking_looks_again_later_at_a_job_of_a_project_no_account_serves(
    router: AccountRouter, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = tracker_for(Settings(track_jobs=True, completion_queue="c"), router)
    assert tracker is not None
    now = datetime.now(UTC)
    result = SnapshotResult(
        request_id="r1",
        project_id="p-nowhere",
        status="accepted",
        finished_at=now,
        jobs=(JobEntry(job_id="job-1", desktop_ids=("d1",)),),
    )
    unit = start_unit([(result, None)], now)
    assert unit is not None
    with caplog.at_level(logging.WARNING, logger="snapworker.tracking"):
        await tracker._look(unit)
    assert unit.jobs_to_read() == {"job-1": "p-nowhere"}  # not declared lost: read again at the next look
    assert any("p-nowhere" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_an_account_may_set_its_own_read_budget(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(
        '[[account]]\nname = "eu"\nprojects = ["p-eu"]\nendpoint = "http://127.0.0.1:9"\nauth_token = "t"\n'
        "read_rate_limit = 2.0\nread_rate_burst = 2\n"
    )
    [europe], _ = load_accounts(path, Settings())
    assert (europe.settings.read_rate_limit, europe.settings.read_rate_burst) == (2.0, 2)
