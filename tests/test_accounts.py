"""ACCOUNTS_FILE: projects routed to their account's endpoint, credential and own rate budget."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from snapworker.cloud.accounts import AccountRouter, NoAccountForProject, load_accounts
from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, Limiter
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.keys import MergeKey
from snapworker.errors import ConfigError
from snapworker.settings import Settings

TWO_ACCOUNTS = """
[default]
region = "cn-north-4"
auth_token = "default-token"

[[account]]
name = "europe"
projects = ["p-eu-1", "p-eu-2"]
endpoint = "https://workspace.eu-west-101.myhuaweicloud.eu"
access_key = "AK-EU"
secret_key = "SK-EU"
security_token = "ST-EU"
rate_limit = 0.5
rate_burst = 2
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    return path


def test_each_account_gets_its_endpoint_credentials_and_budget(tmp_path: Path) -> None:
    accounts, default = load_accounts(_write(tmp_path, TWO_ACCOUNTS), Settings())
    [europe] = accounts
    assert europe.projects == {"p-eu-1", "p-eu-2"}
    assert europe.settings.api_url == "https://workspace.eu-west-101.myhuaweicloud.eu"
    assert (europe.settings.auth_mode, europe.settings.rate_limit, europe.settings.rate_burst) == ("aksk", 0.5, 2)
    assert default is not None
    assert (default.settings.auth_mode, default.settings.api_url) == (
        "token",
        "https://workspace.cn-north-4.myhuaweicloud.com",
    )


def test_the_workers_own_credentials_do_not_leak_into_an_account(tmp_path: Path) -> None:
    accounts, _ = load_accounts(_write(tmp_path, TWO_ACCOUNTS), Settings(auth_token="worker-token"))
    assert accounts[0].settings.auth_token is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[account]]\nname = "a"\nauth_token = "t"\n', "needs projects"),
        ('[[account]]\nname = "a"\nprojects = ["p"]\nauth_token = ""\n', "AUTH_TOKEN is set but empty"),
        ('[[account]]\nname = "a"\nprojects = ["p"]\nauth_token = "t"\nsecrte_key = "x"\n', "unknown fields"),
        (
            '[[account]]\nname = "a"\nprojects = ["p"]\nauth_token = "t"\n'
            '[[account]]\nname = "b"\nprojects = ["p"]\nauth_token = "u"\n',
            "project 'p' is in accounts 'a' and 'b'",
        ),
        ("[default\n", "ACCOUNTS_FILE"),
        ("", "nothing to call the API with"),
    ],
)
def test_an_accounts_file_that_cannot_work_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match="ACCOUNTS_FILE") as info:
        load_accounts(_write(tmp_path, text), Settings())
    assert message in str(info.value)


class _FakeClient(WorkspaceClient):
    """A client that records the calls routed to it instead of sending them."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.calls: list[str] = []
        self.reads: list[str] = []

    async def get_json(
        self, path: str, project_id: str, *, limiter: Limiter | None = None, grant: Grant | None = None
    ) -> dict[str, Any]:
        if grant is not None:
            self.read_limiter.release()
        self.reads.append(project_id)
        snapshot = {"snapshot_id": f"s-{project_id}", "desktop_id": "d1", "description": "snapworker:a1"}
        return {"desktop_snapshots": [snapshot], "total_count": 1}

    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        marker: str | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> CreatedJob:
        self.calls.append(key.project_id)
        return CreatedJob("job", None)


def _router(tmp_path: Path, text: str = TWO_ACCOUNTS) -> tuple[AccountRouter, dict[str, _FakeClient]]:
    accounts, default = load_accounts(_write(tmp_path, text), Settings())
    every = [*accounts, *([default] if default else [])]
    clients = {a.name: _FakeClient(a.settings) for a in every}
    return AccountRouter(Settings(), accounts, default, clients=clients), clients


async def test_calls_go_to_the_account_of_their_project_else_the_default(tmp_path: Path) -> None:
    router, clients = _router(tmp_path)
    for project in ("p-eu-1", "p-other", "p-eu-2"):
        await router.batch_create(MergeKey(project, None, None, None), ["d1"])
    assert clients["europe"].calls == ["p-eu-1", "p-eu-2"]
    assert clients["default"].calls == ["p-other"]


async def test_a_project_of_no_account_fails_without_a_call_when_there_is_no_default(tmp_path: Path) -> None:
    router, _ = _router(tmp_path, '[[account]]\nname = "a"\nprojects = ["p"]\nauth_token = "t"\n')
    with pytest.raises(NoAccountForProject) as info:
        await router.batch_create(MergeKey("elsewhere", None, None, None), ["d1"])
    assert info.value.retryable is False


def test_each_account_has_a_limiter_of_its_own_and_the_gate_admits_their_sum(tmp_path: Path) -> None:
    router, clients = _router(tmp_path)
    europe, default = clients["europe"].limiter, clients["default"].limiter
    assert europe is not default
    europe.on_throttle(1.0)
    assert europe.rate < 0.5
    assert default.rate == Settings().rate_limit  # a throttle of one account never slows another
    assert router.limiter.max_rate == 0.5 + Settings().rate_limit


async def test_the_gates_grant_is_released_when_the_call_ends(tmp_path: Path) -> None:
    router, _ = _router(tmp_path)
    grant = await router.limiter.acquire("batches")
    await router.batch_create(MergeKey("p-eu-1", None, None, None), ["d1"], grant=grant)
    assert router.limiter.in_flight == 0


async def test_snapshot_listings_go_through_the_projects_account_and_its_read_budget(tmp_path: Path) -> None:
    router, clients = _router(tmp_path)
    assert router.read_limiter("p-eu-1") is clients["europe"].read_limiter
    assert router.read_limiter("p-other") is clients["default"].read_limiter
    found = await router.list_snapshots("p-eu-1", ["d1"], since=0.0)
    await router.list_snapshots("p-other", ["d1"], since=0.0)
    assert [s.snapshot_id for s in found["d1"]] == ["s-p-eu-1"]
    assert (clients["europe"].reads, clients["default"].reads) == (["p-eu-1"], ["p-other"])
