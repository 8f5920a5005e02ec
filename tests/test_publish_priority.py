"""``snapworker publish --priority``, run as a user would (dry runs: no broker needed)."""

from __future__ import annotations

import json

from tests.test_publish_options import _dry_run_lines, _publish


def test_dry_run_of_an_urgent_request_prints_the_field_and_priority_9() -> None:
    lines = _dry_run_lines(_publish("--project", "p1", "--desktop", "d1", "--priority", "urgent", "--dry-run"))
    assert json.loads(lines["body"]) == {"project_id": "p1", "desktop_ids": ["d1"], "priority": "urgent"}
    assert json.loads(lines["properties"])["priority"] == 9


def test_dry_run_of_a_normal_request_prints_the_field_and_priority_0() -> None:
    lines = _dry_run_lines(_publish("--project", "p1", "--desktop", "d1", "--priority", "normal", "--dry-run"))
    assert json.loads(lines["body"])["priority"] == "normal"
    assert json.loads(lines["properties"])["priority"] == 0


def test_without_priority_neither_the_field_nor_the_property_is_printed() -> None:
    lines = _dry_run_lines(_publish("--project", "p1", "--desktop", "d1", "--dry-run"))
    assert "priority" not in json.loads(lines["body"])
    assert "priority" not in json.loads(lines["properties"])


def test_another_priority_is_refused_naming_the_choices() -> None:
    ran = _publish("--project", "p1", "--desktop", "d1", "--priority", "high", "--dry-run")
    assert ran.returncode == 2
    assert "--priority: invalid choice: 'high'" in ran.stderr
    assert "'normal', 'urgent'" in ran.stderr
    assert ran.stdout == ""


def test_priority_with_file_is_refused_as_each_line_carries_its_own() -> None:
    ran = _publish("--file", "-", "--priority", "urgent")
    assert ran.returncode == 2
    assert "--priority" in ran.stderr
    assert "a line of the file carries its own priority" in ran.stderr
