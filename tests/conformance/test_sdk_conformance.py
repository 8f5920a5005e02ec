"""The simulator against Huawei's own SDK: ``huaweicloudsdkworkspace``'s WorkspaceClient, signing with AK/SK, drives
``snapworker simulate`` (a real subprocess) through every operation snapworker uses.

Two checks on every answer: the SDK parses it into non-empty, correct values, and its raw JSON holds only fields
of the SDK's model, each of the model's JSON type (the SDK itself would quietly turn ``"100"`` into ``100``).
Each test works on desktops of its own, so the tests share one simulator and stay independent.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conformance.sdk import import_sdk

pytestmark = pytest.mark.timeout(60)

AK = "AKCONFORMANCE0000000"
SK = "SKCONFORMANCEsecret000000000000000000000"
PROJECT = "0123456789abcdef0123456789abcdef"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
WHOLE_SECONDS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


# ------------------------------------------------------------------------------------------ the simulator process


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's next stdout line, or "" if it printed none within ``timeout_s`` or exited."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


@pytest.fixture(scope="module")
def simulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``snapworker simulate`` on a free loopback port, accepting only AK/SK signatures; SIGTERMed at the end."""
    log = tmp_path_factory.mktemp("simulator") / "stderr.log"
    command = [sys.executable, "-m", "snapworker", "simulate", "--port", "0", "--access-key", AK, "--secret-key", SK]
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        line = _read_line(proc, START_TIMEOUT_S)
        if "listening on" not in line:
            pytest.fail(f"the simulator did not start: {line!r}, stderr: {log.read_text()[-2000:]}")
        # "simulator listening on http://127.0.0.1:PORT (credentials required)"
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# ------------------------------------------------------------------------------------------ the SDK


@dataclass(frozen=True)
class Sdk:
    """Huawei's client pointed at the simulator, and the module of its request and response models."""

    client: Any  # huaweicloudsdkworkspace.v2.WorkspaceClient
    models: ModuleType  # huaweicloudsdkworkspace.v2
    exceptions: ModuleType  # huaweicloudsdkcore.exceptions.exceptions


def _client(simulator_url: str, home: Path, *, secret_key: str = SK) -> Sdk:
    credentials, http_config, exceptions, v2 = import_sdk(home)
    config = http_config.HttpConfig.get_default_config()
    config.timeout = (5, 10)  # (connect, read) seconds: a hung simulator fails the test, not the suite
    config.retry_times = 0
    config.user_agent = "snapworker-conformance"  # the SDK's default would read $HOME again
    client = (
        v2.WorkspaceClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials.BasicCredentials(AK, secret_key, PROJECT))
        # A plain-http endpoint is taken as given (only scheme-less ones get https://); nothing else is needed.
        .with_endpoints([simulator_url])
        .build()
    )
    return Sdk(client, v2, exceptions)


@pytest.fixture(scope="module")
def sdk_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sdk-home")


@pytest.fixture(scope="module")
def sdk(simulator_url: str, sdk_home: Path) -> Sdk:
    return _client(simulator_url, sdk_home)


# ------------------------------------------------------------------------------------------ conformance of raw JSON


def _type_problems(value: Any, declared: str, models: ModuleType, where: str) -> list[str]:
    """Where a JSON value strays from the SDK's declared type (``str``, ``int``, ``list[X]``, a model name...)."""
    if value is None:
        return []
    if declared.startswith("list["):
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [
            p for i, item in enumerate(value) for p in _type_problems(item, declared[5:-1], models, f"{where}[{i}]")
        ]
    primitives: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float)}
    if declared in primitives:
        wrong_bool = isinstance(value, bool) and declared != "bool"
        if wrong_bool or not isinstance(value, primitives[declared]):
            return [f"{where}: {value!r} is not {declared}"]
        return []
    if declared == "object":
        return []
    return _model_problems(value, getattr(models, declared), models, where)


def _model_problems(doc: Any, model: type, models: ModuleType, where: str = "$") -> list[str]:
    """Where a raw JSON document strays from an SDK model: a field the model lacks, or a value of another type."""
    if not isinstance(doc, dict):
        return [f"{where}: {doc!r} is not an object ({model.__name__})"]
    attributes = {json_name: attr for attr, json_name in model.attribute_map.items()}  # type: ignore[attr-defined]
    types: dict[str, str] = model.openapi_types  # type: ignore[attr-defined]
    problems = []
    for key, value in doc.items():
        attr = attributes.get(key)
        if attr is None:
            problems.append(f"{where}.{key}: not a field of {model.__name__}")
        else:
            problems += _type_problems(value, types[attr], models, f"{where}.{key}")
    return problems


def _call(sdk: Sdk, operation: str, request: Any) -> Any:
    """Call ``sdk.client.<operation>(request)``; the answer must be 200 and conform to the SDK's response model."""
    response = getattr(sdk.client, operation)(request)
    assert response.status_code == 200
    raw = json.loads(response.raw_content)
    assert _model_problems(raw, type(response), sdk.models) == []
    return response


# ------------------------------------------------------------------------------------------ helpers


def _desktops(n: int) -> list[str]:
    """Desktop IDs no other test uses (UUIDs, as real ones are)."""
    return [str(uuid.uuid4()) for _ in range(n)]


def _batch_create(sdk: Sdk, desktop_ids: list[str], disk_type: str | None = None, **infos: tuple[str, str]) -> str:
    """Create snapshots; ``infos``: system_disk_snapshot / data_disk_snapshot as (name, description)."""
    m = sdk.models
    snapshot_infos = {key: m.DiskSnapshotInfo(name=name, description=text) for key, (name, text) in infos.items()}
    body = m.BatchCreateDesktopSnapshotReq(desktop_ids=desktop_ids, disk_type=disk_type, **snapshot_infos)
    job_id: str = _call(sdk, "batch_create_desktop_snapshot", m.BatchCreateDesktopSnapshotRequest(body=body)).job_id
    return job_id


def _list(sdk: Sdk, desktop_ids: list[str], **query: Any) -> Any:
    request = sdk.models.ListDesktopSnapshotRequest(desktop_ids=desktop_ids, **query)
    return _call(sdk, "list_desktop_snapshot", request)


def _next_second() -> None:
    """Sleep until just after the wall clock's next whole second (create_time has whole seconds only)."""
    time.sleep(1.0 - time.time() % 1.0 + 0.02)


# ------------------------------------------------------------------------------------------ batch-create and jobs


def test_batch_create_answers_a_uuid_job_id(sdk: Sdk) -> None:
    job_id = _batch_create(sdk, _desktops(2), "SYSTEM_DISK")
    assert uuid.UUID(job_id).version == 4


def test_show_job_parses_into_show_job_response_covering_the_desktops_sent(sdk: Sdk) -> None:
    desktops = _desktops(3)
    job_id = _batch_create(sdk, desktops)
    job = _call(sdk, "show_job", sdk.models.ShowJobRequest(job_id=job_id))
    assert job.id == job_id
    assert job.status == "SUCCESS"
    assert job.job_type
    assert job.begin_time
    assert job.end_time
    assert job.sub_jobs_total == 3
    assert sorted(s.entities.desktop_id for s in job.sub_jobs) == sorted(desktops)


def test_show_job_sub_jobs_are_job_detail_infos_with_an_int_process(sdk: Sdk) -> None:
    job_id = _batch_create(sdk, _desktops(2))
    job = _call(sdk, "show_job", sdk.models.ShowJobRequest(job_id=job_id))
    for sub_job in job.sub_jobs:
        assert isinstance(sub_job, sdk.models.JobDetailInfo)
        assert (sub_job.job_id, sub_job.project_id, sub_job.status) == (job_id, PROJECT, "SUCCESS")
        assert type(sub_job.process) is int
        assert sub_job.process == 100
        assert sub_job.entities.desktop_name


def test_list_ita_sub_jobs_pages_the_jobs_sub_jobs(sdk: Sdk) -> None:
    desktops = _desktops(5)
    job_id = _batch_create(sdk, desktops)
    request = sdk.models.ListItaSubJobsRequest(job_id=job_id, limit=2, offset=1)
    page = _call(sdk, "list_ita_sub_jobs", request)
    assert page.total_count == 5
    assert [s.entities.desktop_id for s in page.jobs] == desktops[1:3]
    assert {s.job_id for s in page.jobs} == {job_id}


def test_a_wrong_secret_key_is_refused_401(simulator_url: str, sdk_home: Path) -> None:
    wrong = _client(simulator_url, sdk_home, secret_key="SKwrong")
    with pytest.raises(wrong.exceptions.ClientRequestException) as refused:
        wrong.client.show_job(wrong.models.ShowJobRequest(job_id=str(uuid.uuid4())))
    assert (refused.value.status_code, refused.value.error_code) == (401, "APIG.0301")


# ------------------------------------------------------------------------------------------ snapshots


def test_list_desktop_snapshot_filters_by_a_desktop_ids_list(sdk: Sdk) -> None:
    desktops = _desktops(3)
    _batch_create(sdk, desktops)
    listing = _list(sdk, desktops[:2])
    assert sorted(s.desktop_id for s in listing.desktop_snapshots) == sorted(desktops[:2])
    assert listing.total_count == 2


def test_disk_type_all_gives_one_system_and_one_data_snapshot_per_desktop(sdk: Sdk) -> None:
    desktops = _desktops(2)
    _batch_create(sdk, desktops, "ALL")
    listing = _list(sdk, desktops)
    kinds = sorted((s.desktop_id, s.is_system_disk) for s in listing.desktop_snapshots)
    assert kinds == sorted((d, kind) for d in desktops for kind in (True, False))
    assert {s.status for s in listing.desktop_snapshots} == {"create_success"}
    assert {s.create_type for s in listing.desktop_snapshots} == {"MANUALLY"}


def test_snapshots_are_named_desktop_name_given_name_timestamp_with_their_description(sdk: Sdk) -> None:
    [desktop] = _desktops(1)
    _batch_create(
        sdk, [desktop], "ALL", system_disk_snapshot=("sys", "system disk"), data_disk_snapshot=("dat", "data disk")
    )
    by_disk = {s.is_system_disk: s for s in _list(sdk, [desktop]).desktop_snapshots}
    system, data = by_disk[True], by_disk[False]
    stamp = re.sub(r"\D", "", system.create_time)
    assert system.snapshot_name == f"{system.desktop_name}-sys-{stamp}"
    assert data.snapshot_name == f"{data.desktop_name}-dat-{stamp}"
    assert (system.description, data.description) == ("system disk", "data disk")


def test_snapshot_create_time_is_utc_in_whole_seconds(sdk: Sdk) -> None:
    desktops = _desktops(1)
    _batch_create(sdk, desktops)
    [snapshot] = _list(sdk, desktops).desktop_snapshots
    assert WHOLE_SECONDS_UTC.match(snapshot.create_time)


def test_list_desktop_snapshot_pages_by_offset_and_limit_with_the_total_count(sdk: Sdk) -> None:
    desktops = _desktops(5)
    _batch_create(sdk, desktops)
    pages = [_list(sdk, desktops, offset=offset, limit=2) for offset in (0, 2, 4)]
    assert [p.total_count for p in pages] == [5, 5, 5]
    assert [len(p.desktop_snapshots) for p in pages] == [2, 2, 1]
    listed = [s.desktop_id for p in pages for s in p.desktop_snapshots]
    assert sorted(listed) == sorted(desktops)


def test_list_desktop_snapshot_sorts_by_create_time_desc(sdk: Sdk) -> None:
    older, newer = _desktops(2)
    _batch_create(sdk, [older])
    _next_second()
    _batch_create(sdk, [newer])
    listing = _list(sdk, [older, newer], sort_field="create_time", sort_type="DESC")
    assert [s.desktop_id for s in listing.desktop_snapshots] == [newer, older]
    assert listing.desktop_snapshots[0].create_time > listing.desktop_snapshots[1].create_time


def test_a_snapshot_name_query_with_spaces_and_unicode_is_signed_as_the_simulator_verifies(sdk: Sdk) -> None:
    desktops = _desktops(1)
    _batch_create(sdk, desktops, system_disk_snapshot=("nuit blanche é+/~", ""))
    listing = _list(sdk, desktops, snapshot_name="nuit blanche é+/~")
    assert listing.total_count == 1
