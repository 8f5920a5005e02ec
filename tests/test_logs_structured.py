"""Logs a person can follow: extras as JSON fields, totals as data, repeated warnings aggregated."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Literal

import pytest

from snapworker.ops.logs import RepeatFilter, configure_logging
from snapworker.settings import Settings


def _capture(log_format: Literal["console", "json"]) -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    return stream, configure_logging(Settings(log_format=log_format, log_level="DEBUG"), stream=stream)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream, handler = _capture("json")
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def test_json_lines_carry_every_extra_as_a_field(json_log: io.StringIO) -> None:
    logging.getLogger("snapworker.test").info("cut", extra={"rate": 0.75, "error_code": "APIG.0308"})
    entry = json.loads(json_log.getvalue())
    assert (entry["message"], entry["rate"], entry["error_code"]) == ("cut", 0.75, "APIG.0308")


def test_worker_totals_are_a_json_field_not_text_in_the_message(json_log: io.StringIO) -> None:
    logging.getLogger("snapworker.worker").info("worker totals", extra={"totals": {"batches_sent": 3}})
    entry = json.loads(json_log.getvalue())
    assert (entry["message"], entry["totals"]) == ("worker totals", {"batches_sent": 3})


def test_worker_totals_read_as_json_after_the_marker_in_the_console_format() -> None:
    stream, handler = _capture("console")
    try:
        logging.getLogger("snapworker.worker").info("worker totals", extra={"totals": {"b": 1, "a": 2}})
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().rstrip().endswith('worker totals {"a": 2, "b": 1}')


def _record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("snapworker.test", level, __file__, 1, msg, args, None)


def test_a_burst_of_the_same_warning_passes_only_burst_times() -> None:
    now = [0.0]
    repeat = RepeatFilter(window_s=60, burst=3, clock=lambda: now[0])
    passed = [repeat.filter(_record("retrying %s", n)) for n in range(10)]
    assert passed == [True] * 3 + [False] * 7


def test_the_first_warning_after_the_window_says_how_many_were_not_logged() -> None:
    now = [0.0]
    repeat = RepeatFilter(window_s=60, burst=1, clock=lambda: now[0])
    for n in range(4):
        repeat.filter(_record("retrying %s", n))
    now[0] = 61.0
    record = _record("retrying %s", 9)
    assert repeat.filter(record)
    assert record.getMessage() == "retrying 9 (3 more like it in the last 60 s were not logged)"
    assert record.__dict__["suppressed"] == 3


def test_different_warnings_and_info_lines_are_not_aggregated() -> None:
    repeat = RepeatFilter(window_s=60, burst=1, clock=lambda: 0.0)
    assert repeat.filter(_record("one"))
    assert repeat.filter(_record("two"))
    assert all(repeat.filter(_record("info", level=logging.INFO)) for _ in range(5))
