"""WorkspaceClient and a refused credential, over loopback HTTP to the simulator: the refusal is a fault of the
worker (reported with a probe, retryable, never retried by the call), and a token rotated in its file is tried at
once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.credential import Probe
from snapworker.contract.models import DiskSnapshotInfo
from snapworker.domain.keys import MergeKey
from snapworker.errors import ApiCredentialRefused
from snapworker.settings import Settings
from snapworker.simulator.app import SimConfig, Simulator

PROJECT = "0123456789abcdef0123456789abcdef"
KEY = MergeKey(PROJECT, "SYSTEM_DISK", DiskSnapshotInfo(name="nightly"), None)


class Watch:
    def __init__(self) -> None:
        self.refusals: list[tuple[str, ApiCredentialRefused, Probe]] = []

    def refused(self, who: str, error: ApiCredentialRefused, probe: Probe) -> None:
        self.refusals.append((who, error, probe))


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimConfig(tokens=frozenset({"fresh"})))
    await sim.start(host="127.0.0.1", port=0)
    try:
        yield sim
    finally:
        await sim.stop()


def _client(simulator: Simulator, watch: Watch, **credential: object) -> WorkspaceClient:
    settings = Settings(api_url=simulator.url, retry_max_tries=5, **credential)  # type: ignore[arg-type]
    return WorkspaceClient(settings, credential_watch=watch, who="main")


async def test_a_refused_token_raises_a_retryable_refusal_after_one_try(simulator: Simulator) -> None:
    watch = Watch()
    async with _client(simulator, watch, auth_token="expired") as client:
        with pytest.raises(ApiCredentialRefused) as caught:
            await client.batch_create(KEY, ["d1"])
    assert caught.value.retryable is True
    assert (caught.value.http_status, caught.value.error_code, caught.value.tries) == (401, "APIG.0301", 1)
    assert simulator.stats()["calls_by_status"] == {"401": 1}  # never retried by the call


async def test_a_refusal_is_reported_once_per_call_with_the_credential_name(simulator: Simulator) -> None:
    watch = Watch()
    async with _client(simulator, watch, auth_token="expired") as client:
        with pytest.raises(ApiCredentialRefused):
            await client.batch_create(KEY, ["d1"])
    assert [who for who, _, _ in watch.refusals] == ["main"]


async def test_the_reported_probe_tells_when_the_credential_works_again(simulator: Simulator) -> None:
    watch = Watch()
    async with _client(simulator, watch, auth_token="expired") as client:
        with pytest.raises(ApiCredentialRefused):
            await client.batch_create(KEY, ["d1"])
        probe = watch.refusals[0][2]
        with pytest.raises(ApiCredentialRefused):
            await probe()
        simulator.config.tokens = frozenset({"expired"})  # the same token accepted again
        await probe()


async def test_a_token_rotated_in_its_file_is_tried_at_once_after_a_refusal(
    simulator: Simulator, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("stale", encoding="utf-8")
    watch = Watch()
    async with _client(simulator, watch, auth_token_file=str(token_file)) as client:
        new = tmp_path / "token.new"
        new.write_text("fresh", encoding="utf-8")
        os.replace(new, token_file)  # rotated within the file's check interval: only the 401 makes it read
        job = await client.batch_create(KEY, ["d1"])
    assert job.job_id
    assert watch.refusals == []


async def test_a_wrong_secret_key_is_a_refused_credential(simulator: Simulator) -> None:
    simulator.config.credentials = {"AKTESTAK000000000000": "right-secret-key"}
    watch = Watch()
    client = _client(simulator, watch, access_key="AKTESTAK000000000000", secret_key="wrong-secret-key")
    async with client:
        with pytest.raises(ApiCredentialRefused):
            await client.batch_create(KEY, ["d1"])
    assert len(watch.refusals) == 1


async def test_verify_credential_reads_once_and_returns_when_accepted(simulator: Simulator) -> None:
    async with _client(simulator, Watch(), auth_token="fresh") as client:
        await client.verify_credential(PROJECT)
    assert simulator.stats()["snapshot_queries"] == 1
    assert simulator.stats()["calls_total"] == 0  # no batch-create
