"""The wire contract: what a request may contain and how a result is written."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from snapworker.contract.models import SnapshotRequest, SnapshotResult


def valid(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"project_id": "0123456789abcdef", "desktop_ids": ["d-1"]}
    body.update(changes)
    return body


def test_minimal_request_is_valid() -> None:
    req = SnapshotRequest.model_validate(valid())
    assert req.desktop_ids == ("d-1",)
    assert req.disk_type is None


@pytest.mark.parametrize(
    "project_id",
    ["", "a" * 65, "../admin", "p/1", "p 1", "p%2F", "proj?x=1", "é"],
)
def test_project_ids_that_could_change_the_url_path_are_rejected(project_id: str) -> None:
    with pytest.raises(ValidationError, match="project_id"):
        SnapshotRequest.model_validate(valid(project_id=project_id))


@pytest.mark.parametrize("desktop_ids", [[], ["a" * 37], ["bad/id"], [""], [1], ["d"] * 0, "d-1"])
def test_bad_desktop_ids_are_rejected(desktop_ids: Any) -> None:
    with pytest.raises(ValidationError, match="desktop_ids"):
        SnapshotRequest.model_validate(valid(desktop_ids=desktop_ids))


def test_at_most_1000_desktops_per_request() -> None:
    SnapshotRequest.model_validate(valid(desktop_ids=[f"d{i}" for i in range(1000)]))
    with pytest.raises(ValidationError, match="desktop_ids"):
        SnapshotRequest.model_validate(valid(desktop_ids=[f"d{i}" for i in range(1001)]))


def test_repeated_desktops_count_once_in_publisher_order() -> None:
    req = SnapshotRequest.model_validate(valid(desktop_ids=["b", "a", "b", "a", "c"]))
    assert req.desktop_ids == ("b", "a", "c")


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError, match="desktop_id"):
        SnapshotRequest.model_validate(valid(desktop_id=["typo"]))


def test_unknown_fields_inside_snapshot_settings_are_rejected() -> None:
    with pytest.raises(ValidationError, match="nmae"):
        SnapshotRequest.model_validate(valid(system_disk_snapshot={"nmae": "x"}))


@pytest.mark.parametrize("disk_type", ["SYSTEM_DISK", "DATA_DISKS", "ALL"])
def test_documented_disk_types_are_accepted(disk_type: str) -> None:
    assert SnapshotRequest.model_validate(valid(disk_type=disk_type)).disk_type == disk_type


def test_other_disk_types_are_rejected() -> None:
    with pytest.raises(ValidationError, match="disk_type"):
        SnapshotRequest.model_validate(valid(disk_type="system_disk"))


@pytest.mark.parametrize(("field", "limit"), [("name", 64), ("description", 255)])
def test_snapshot_name_and_description_lengths(field: str, limit: int) -> None:
    SnapshotRequest.model_validate(valid(data_disk_snapshot={field: "x" * limit}))
    with pytest.raises(ValidationError, match=field):
        SnapshotRequest.model_validate(valid(data_disk_snapshot={field: "x" * (limit + 1)}))


def test_request_id_length_is_bounded() -> None:
    with pytest.raises(ValidationError, match="request_id"):
        SnapshotRequest.model_validate(valid(request_id="x" * 129))


def test_requests_are_frozen() -> None:
    req = SnapshotRequest.model_validate(valid())
    with pytest.raises(ValidationError):
        req.project_id = "other"  # type: ignore[misc]


def test_result_finished_at_is_written_in_utc_rfc3339() -> None:
    local = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=8)))
    result = SnapshotResult(request_id="r", project_id="p", status="accepted", finished_at=local)
    assert result.model_dump(mode="json")["finished_at"] == "2026-01-01T19:04:05.000Z"


def test_result_requires_an_aware_timestamp() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        SnapshotResult(request_id="r", project_id="p", status="accepted", finished_at=datetime(2026, 1, 1))


def test_result_round_trips_through_json() -> None:
    result = SnapshotResult(
        request_id="r",
        correlation_id="c",
        project_id=None,
        status="invalid",
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert SnapshotResult.model_validate_json(result.model_dump_json()) == result
