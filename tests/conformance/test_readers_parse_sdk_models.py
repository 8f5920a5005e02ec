"""The other direction: snapworker's readers (snapshot listings, jobs) build their queries as Huawei's SDK does and
read answers built from the SDK's own models, not from our simulator's."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.jobs import JobReader
from snapworker.cloud.limiter import Grant, Limiter
from snapworker.cloud.snapshots import SnapshotReader, listing_path, parse_listing
from snapworker.core import MergeKey
from snapworker.domain.snapshots import Absent, Created, Doubt, marker
from snapworker.idempotency.reconcile import Reconciler
from snapworker.settings import Settings
from tests.conformance.sdk import import_sdk

PROJECT = "0123456789abcdef0123456789abcdef"
CREATED = "2026-12-03T23:38:54Z"


class Sdk:
    def __init__(self, home: Path) -> None:
        _, _, _, self.v2 = import_sdk(home)
        http_utils = importlib.import_module("huaweicloudsdkcore.utils.http_utils")
        self.wire: Callable[[Any], Any] = http_utils.sanitize_for_serialization  # a model as its JSON
        self.tuples: Callable[..., list[tuple[str, Any]]] = http_utils.parameters_to_tuples


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Sdk:
    return Sdk(tmp_path_factory.mktemp("home"))


class SdkAnswers(WorkspaceClient):
    """Answers every GET with the next document of ``answers`` (built from the SDK's models); records the paths."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(Settings(read_rate_limit=1000.0))
        self.answers = answers
        self.paths: list[str] = []

    async def get_json(
        self, path: str, project_id: str, *, limiter: Limiter | None = None, grant: Grant | None = None
    ) -> dict[str, Any]:
        if grant is not None:
            self.read_limiter.release()
        self.paths.append(path)
        return self.answers.pop(0)


def snapshot(sdk: Sdk, sid: str, desktop: str, *, system: bool, description: str) -> Any:
    return sdk.v2.DesktopSnapshotDetailInfo(
        snapshot_id=sid,
        snapshot_name=f"desk-{desktop}-nightly-20261203233854",
        desktop_id=desktop,
        desktop_name=f"desk-{desktop}",
        desktop_sid="S-1-5-21-1",
        is_system_disk=system,
        status="create_success",
        process=None,
        description=description,
        create_time=CREATED,
        create_type="MANUALLY",
    )


def test_the_listing_query_is_the_one_the_sdk_sends(sdk: Sdk) -> None:
    request = sdk.v2.ListDesktopSnapshotRequest(
        desktop_ids=["d1", "d2"], sort_field="create_time", sort_type="DESC", offset=1000, limit=1000
    )
    info = sdk.v2.WorkspaceClient._list_desktop_snapshot_http_info(request)
    multi = dict.fromkeys(info["collection_formats"], "multi")  # how the SDK's client sends lists
    given = [(k, v) for k, v in info["query_params"] if v is not None]  # the SDK's client drops unset ones
    sent = sorted((k, str(v)) for k, v in sdk.tuples(given, multi))
    ours = urlsplit(listing_path(PROJECT, ["d1", "d2"], offset=1000))
    assert info["resource_path"] == "/v2/{project_id}/snapshots"
    assert ours.path == f"/v2/{PROJECT}/snapshots"
    assert sorted(parse_qsl(ours.query)) == sent


def test_a_listing_built_from_the_sdks_models_is_read_snapshot_by_snapshot(sdk: Sdk) -> None:
    answer = sdk.v2.ListDesktopSnapshotResponse(
        desktop_snapshots=[
            snapshot(sdk, "s-sys", "d1", system=True, description="snapworker:a1"),
            snapshot(sdk, "s-data", "d1", system=False, description=""),
        ],
        total_count=2,
    )
    views, total = parse_listing(sdk.wire(answer))
    assert total == 2
    assert [(v.snapshot_id, v.is_system_disk, v.description) for v in views] == [
        ("s-sys", True, "snapworker:a1"),
        ("s-data", False, ""),
    ]
    assert views[0].desktop_name == "desk-d1"
    assert views[0].created_at == datetime(2026, 12, 3, 23, 38, 54, tzinfo=UTC).timestamp()


async def test_reconciliation_finds_the_attempts_snapshot_in_an_sdk_answer(sdk: Sdk) -> None:
    answer = sdk.v2.ListDesktopSnapshotResponse(
        desktop_snapshots=[
            snapshot(sdk, "s-mine", "d1", system=True, description=marker("a1")),
            snapshot(sdk, "s-theirs", "d2", system=True, description=marker("someone-else")),
        ],
        total_count=2,
    )
    api = SdkAnswers([sdk.wire(answer)])
    doubt = Doubt(frozenset({marker("a1")}), datetime(2026, 12, 3, 23, 38, tzinfo=UTC).timestamp(), "nightly")
    checked = await Reconciler(SnapshotReader(api)).check(
        MergeKey(PROJECT, None, None, None), {"d1": doubt, "d2": doubt}
    )
    assert checked.verdicts == {"d1": Created("s-mine"), "d2": Absent()}
    assert len(api.paths) == 1


def sub_job(sdk: Sdk, desktop: str, status: str) -> Any:
    return sdk.v2.JobDetailInfo(
        id=f"sub-{desktop}",
        job_type="BATCH_CREATE_SNAPSHOTS",
        entities=sdk.v2.JobEntities(desktop_id=desktop, desktop_name=f"desk-{desktop}"),
        begin_time=CREATED,
        status=status,
        error_code="WKS.0005" if status == "FAIL" else None,
        fail_reason="the ECS call failed" if status == "FAIL" else None,
        process=100,
        job_id="job-1",
    )


async def test_a_job_built_from_the_sdks_models_is_read_with_every_sub_job(sdk: Sdk) -> None:
    job = sdk.v2.ShowJobResponse(
        id="job-1",
        job_type="BATCH_CREATE_SNAPSHOTS",
        begin_time=CREATED,
        end_time="2026-12-03T23:40:00Z",
        status="FAIL",
        job_error_code="WKS.0005",
        fail_reason="Some snapshots failed to be created.",
        sub_jobs_total=3,
        sub_jobs=[sub_job(sdk, "d1", "SUCCESS")],
    )
    page = sdk.v2.ListItaSubJobsResponse(
        total_count=3, jobs=[sub_job(sdk, "d2", "SUCCESS"), sub_job(sdk, "d3", "FAIL")]
    )
    api = SdkAnswers([sdk.wire(job), sdk.wire(page)])
    view = await JobReader(api).read(PROJECT, "job-1")
    assert (view.status, view.end_time, view.error_code, view.complete) == (
        "FAIL",
        "2026-12-03T23:40:00Z",
        "WKS.0005",
        True,
    )
    assert {d: s.status for d, s in view.sub_jobs.items()} == {"d1": "SUCCESS", "d2": "SUCCESS", "d3": "FAIL"}
    assert view.sub_jobs["d3"].error_code == "WKS.0005"
    assert "workspace-sub-jobs?job_id=job-1" in api.paths[1]
