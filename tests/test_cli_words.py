"""What the command line says, run as a user runs it (``python -m snapworker ...``), needing nothing running:
JSON lines from the first line on, the help texts, the simulator's option checks, counts and their nouns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from snapworker.contract.models import SnapshotResult
from snapworker.contract.schemas import SCHEMA_FILES
from snapworker.tools.publish import FileReport
from snapworker.tools.results import result_json
from snapworker.words import plural

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/"
NOW = "2026-12-04T08:00:00Z"


def _snapworker(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("SNAPWORKER_")}
    return subprocess.run(
        [sys.executable, "-m", "snapworker", *args],
        env=clean | {"SNAPWORKER_AMQP_URL": NO_BROKER} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- LOG_FORMAT=json: every line


def test_with_json_logs_a_run_with_invalid_settings_writes_only_json_lines() -> None:
    ran = _snapworker(
        "run",
        SNAPWORKER_LOG_FORMAT="json",
        SNAPWORKER_LINGERMS="1",  # a typo: the unknown-variable warning, written while loading the settings
        SNAPWORKER_PREFETCH="lots",  # invalid: the fatal line
        SNAPWORKER_AUTH_TOKEN="tok",
    )
    assert ran.returncode == 2
    entries = [json.loads(line) for line in ran.stderr.splitlines()]  # fails on any line that is not JSON
    assert [(e["level"], e["logger"]) for e in entries] == [
        ("WARNING", "snapworker.settings"),
        ("ERROR", "snapworker.cli"),
    ]
    assert "SNAPWORKER_LINGERMS; did you mean SNAPWORKER_LINGER_MS?" in entries[0]["message"]
    assert entries[1]["message"].startswith("snapworker: invalid settings: SNAPWORKER_PREFETCH")
    assert entries[1]["exit_code"] == 2


def test_with_console_logs_the_fatal_line_stays_plain() -> None:
    ran = _snapworker("run", SNAPWORKER_PREFETCH="lots", SNAPWORKER_AUTH_TOKEN="tok")
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "snapworker: invalid settings: SNAPWORKER_PREFETCH: Input should be a valid integer, unable to parse string "
        "as an integer"
    ]


# -- help


def test_results_help_names_the_completion_queue_setting() -> None:
    assert "SNAPWORKER_COMPLETION_QUEUE" in _snapworker("results", "--help").stdout


def test_schema_help_names_every_schema_file() -> None:
    text = " ".join(_snapworker("schema", "--help").stdout.split())  # argparse wraps lines
    assert [name for name in SCHEMA_FILES if name not in text] == []


def test_run_help_says_a_second_ctrl_c_exits_at_once() -> None:
    assert "a second Ctrl-C exits at once" in _snapworker("run", "--help").stdout


def test_simulate_help_shows_the_defaults() -> None:
    text = " ".join(_snapworker("simulate", "--help").stdout.split())
    assert "share of calls answered 5xx (default: 0.0)" in text
    assert "address to listen on (default: 127.0.0.1)" in text
    assert "(default: None)" not in text  # an unset option says nothing rather than "None"


# -- the simulator's options

RATIOS = ("--error-5xx-ratio", "--html-error-ratio", "--error-429-ratio", "--stall-ratio", "--drop-after-create-ratio")


@pytest.mark.parametrize("option", RATIOS)
@pytest.mark.parametrize("value", ["2", "-0.1", "nan"])
def test_simulate_refuses_a_ratio_outside_0_to_1(option: str, value: str) -> None:
    ran = _snapworker("simulate", "--port", "0", option, value)
    assert ran.returncode == 2
    assert ran.stderr.splitlines()[-1] == (
        f"snapworker simulate: error: argument {option}: a share of calls, from 0 to 1 (0.05 is 5 %), got {value}"
    )


def test_simulate_refuses_a_negative_duration() -> None:
    ran = _snapworker("simulate", "--port", "0", "--latency-s", "-1")
    assert ran.returncode == 2
    assert "argument --latency-s: seconds, 0 or more, got -1" in ran.stderr


# -- counts and nouns


@pytest.mark.parametrize(
    ("count", "words"), [(0, "0 desktops"), (1, "1 desktop"), (2, "2 desktops"), (-1, "-1 desktops")]
)
def test_a_count_agrees_with_its_noun(count: int, words: str) -> None:
    assert plural(count, "desktop") == words


def test_an_irregular_plural_is_given() -> None:
    assert plural(3, "batch", "batches") == "3 batches"


def test_publishing_one_message_with_one_bad_line_says_so_in_the_singular() -> None:
    report = FileReport(confirmed=1, invalid=[(2, "not JSON")])
    assert report.summary() == "confirmed 1 message; 1 invalid line not published"


# -- truncated: on the wire and in print only when true


def test_a_result_prints_without_truncated_when_it_was_not_cut() -> None:
    result = SnapshotResult.model_validate(
        {"request_id": "r1", "project_id": "p1", "status": "accepted", "finished_at": NOW}
    )
    assert "truncated" not in json.loads(result_json(result, indent=2))


def test_a_cut_result_prints_truncated_true() -> None:
    result = SnapshotResult.model_validate(
        {"request_id": "r1", "project_id": "p1", "status": "accepted", "finished_at": NOW, "truncated": True}
    )
    assert json.loads(result_json(result))["truncated"] is True
