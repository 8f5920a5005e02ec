"""``snapworker publish``'s request options and ``--dry-run``, which needs no broker: run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from snapworker.contract.models import SnapshotRequest
from snapworker.tools.publish import request_from_options

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/"  # a dry run must not need one


def _publish(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    env |= {"SNAPWORKER_AMQP_URL": NO_BROKER, "SNAPWORKER_REQUEST_QUEUE": "my.requests"}
    return subprocess.run(
        [sys.executable, "-m", "snapworker", "publish", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _dry_run_lines(ran: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert ran.returncode == 0, ran.stderr
    return dict(line.split(": ", 1) for line in ran.stdout.splitlines())


def test_dry_run_prints_the_body_with_every_option_and_publishes_nothing() -> None:
    ran = _publish(
        "--project", "p1", "--desktop", "d1", "--request-id", "up-7", "--snapshot-name", "pre-upgrade",
        "--description", "before the upgrade", "--disk-type", "SYSTEM_DISK", "--dry-run",
    )  # fmt: skip
    body = json.loads(_dry_run_lines(ran)["body"])
    assert body == {
        "project_id": "p1",
        "desktop_ids": ["d1"],
        "disk_type": "SYSTEM_DISK",
        "system_disk_snapshot": {"name": "pre-upgrade", "description": "before the upgrade"},
        "request_id": "up-7",
    }


def test_dry_run_body_is_a_valid_request() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--snapshot-name", "n", "--dry-run")
    SnapshotRequest.model_validate_json(_dry_run_lines(ran)["body"])


def test_dry_run_prints_the_queue_and_the_amqp_properties() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--request-id", "up-7", "--reply-to", "mine", "--dry-run")
    lines = _dry_run_lines(ran)
    assert lines["queue"].startswith("my.requests ")
    properties: dict[str, Any] = json.loads(lines["properties"])
    assert properties.pop("correlation_id")
    assert properties == {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": "up-7",
        "reply_to": "mine",
    }


def test_dry_run_of_an_invalid_request_says_why_and_exits_2() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--snapshot-name", "x" * 65, "--dry-run")
    assert ran.returncode == 2
    assert "system_disk_snapshot.name" in ran.stderr
    assert ran.stdout == ""


def test_dry_run_with_wait_is_refused() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--dry-run", "--wait")
    assert ran.returncode == 2
    assert "drop --wait" in ran.stderr


def test_request_options_with_file_are_refused() -> None:
    ran = _publish("--file", "-", "--request-id", "r1")
    assert ran.returncode == 2
    assert "go with --project, not --file" in ran.stderr


@pytest.mark.parametrize(
    ("disk_type", "system", "data"),
    [(None, True, False), ("SYSTEM_DISK", True, False), ("DATA_DISKS", False, True), ("ALL", True, True)],
)
def test_snapshot_name_goes_to_the_disks_the_disk_type_covers(disk_type: Any, system: bool, data: bool) -> None:
    request = request_from_options("p1", ("d1",), disk_type=disk_type, snapshot_name="n", description="d")
    assert (request.system_disk_snapshot is not None, request.data_disk_snapshot is not None) == (system, data)


def test_no_snapshot_name_or_description_sends_no_snapshot_info() -> None:
    request = request_from_options("p1", ("d1",), disk_type="ALL")
    assert (request.system_disk_snapshot, request.data_disk_snapshot) == (None, None)


def test_publish_without_a_desktop_says_to_give_one() -> None:
    ran = _publish("--project", "p1", "--dry-run")
    assert ran.returncode == 2
    assert "give at least one --desktop" in ran.stderr


def test_publish_with_an_empty_desktop_says_which_option_is_empty() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--desktop", " ", "--dry-run")
    assert ran.returncode == 2
    assert "a --desktop is empty" in ran.stderr
