"""Reconciliation against the simulator's GET snapshots: found, absent and undecidable desktops."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.contract.models import DiskSnapshotInfo
from snapworker.core import MergeKey
from snapworker.idempotency.reconcile import reconcile
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from tests.conftest import SIM_TOKEN

KEY = MergeKey("p1", None, DiskSnapshotInfo(name="nightly"), None)


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[WorkspaceClient]:
    async with WorkspaceClient(Settings(api_url=simulator.url, auth_token=SIM_TOKEN)) as c:
        yield c


async def test_a_desktop_the_call_snapshotted_is_found_and_one_it_did_not_is_absent(client: WorkspaceClient) -> None:
    before = time.time()
    await client.batch_create(KEY, ["d1"])
    found = await reconcile(client.get_json, KEY, {"d1": before, "d2": before})
    assert list(found.created) == ["d1"]
    assert found.absent == ["d2"]
    assert found.unknown == {}
    assert found.entries()[0].job_id.startswith("reconciled:")  # type: ignore[union-attr]


async def test_a_snapshot_older_than_the_intent_does_not_count(client: WorkspaceClient) -> None:
    await client.batch_create(KEY, ["d1"])
    found = await reconcile(client.get_json, KEY, {"d1": time.time() + 3600})
    assert found.absent == ["d1"]


async def test_a_snapshot_under_another_name_does_not_count(client: WorkspaceClient) -> None:
    await client.batch_create(MergeKey("p1", None, DiskSnapshotInfo(name="weekly"), None), ["d1"])
    found = await reconcile(client.get_json, KEY, {"d1": time.time() - 60})
    assert found.absent == ["d1"]


async def test_a_listing_that_fails_leaves_the_desktop_unknown_and_maybe_created(simulator: Simulator) -> None:
    async with WorkspaceClient(Settings(api_url=simulator.url, auth_token="wrong", retry_max_tries=1)) as bad:
        found = await reconcile(bad.get_json, KEY, {"d1": time.time()})
    assert list(found.unknown) == ["d1"]
    (entry,) = found.entries()
    assert entry.maybe_created  # type: ignore[union-attr]
