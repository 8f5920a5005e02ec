"""The benchmark's pure parts: arithmetic, table, /proc parsing, log parsing. No timing, no broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.broker import check_loopback
from bench.infra import parse_settings_line, parse_totals
from bench.procs import parse_proc_stat_busy, parse_stat_cpu_ticks, parse_status_kb
from bench.report import (
    Row,
    format_table,
    minimum_calls,
    minimum_calls_with_linger,
    percentile,
    ratio,
    spread,
)
from bench.scenarios import backlog, backlog_minimum_calls, rotated
from bench.summary import summarize


def test_spread_is_median_min_max_and_skips_missing_runs() -> None:
    s = spread([3.0, None, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.show() == "2 (1–3)"
    assert spread([5.0]).show("{:.1f}") == "5.0"
    assert spread([None]).show() == "n/a"


def test_ratio_refuses_missing_or_zero() -> None:
    assert ratio(6.0, 2.0) == 3.0
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None


def test_minimum_calls_per_merge_key_and_distinct_desktops() -> None:
    pairs = [("p1", f"d{i}") for i in range(250)] + [("p1", "d0"), ("p2", "x")]
    assert minimum_calls(pairs) == 3 + 1
    assert minimum_calls(pairs, max_batch=10) == 25 + 1
    assert backlog_minimum_calls(20_000, 50) == 200
    assert backlog_minimum_calls(1_500, 10, max_batch=10) == 150


def test_minimum_calls_with_linger_opens_a_window_at_the_first_waiting_arrival() -> None:
    arrivals = [("a", 0.0), ("a", 0.2), ("a", 0.26), ("a", 0.5), ("b", 0.1)]
    # a: [0.0, 0.2] then [0.26, 0.5]; b: one call
    assert minimum_calls_with_linger(arrivals, linger_s=0.25) == 3
    assert minimum_calls_with_linger([("a", 0.0)] * 5, linger_s=1.0, max_batch=2) == 3


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_table_is_aligned_markdown() -> None:
    rows = [Row("throughput", "5,000", "(a) 4,000", "1.25x", ">= 1.2x", "PASS"), Row("x", "1", "", "", "", "info")]
    lines = format_table(rows).splitlines()
    assert lines[0].startswith("| figure")
    assert set(lines[1]) <= {"|", "-"}
    assert len({len(line) for line in lines}) == 1
    assert "| PASS   |" in lines[2]


def test_proc_parsing_on_this_process() -> None:
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert parse_stat_cpu_ticks(stat) >= 0
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    rss, hwm = parse_status_kb(status, "VmRSS"), parse_status_kb(status, "VmHWM")
    assert rss is not None
    assert hwm is not None
    assert 0 < rss <= hwm
    assert parse_status_kb(status, "NoSuchField") is None
    busy, total = parse_proc_stat_busy(Path("/proc/stat").read_text())
    assert 0 <= busy <= total


def test_stat_parsing_survives_odd_command_names() -> None:
    fields = ["S"] + ["0"] * 10 + ["7", "5"] + ["0"] * 30
    assert parse_stat_cpu_ticks("42 (a) b (c) " + " ".join(fields)) == 12


def test_totals_and_settings_lines_are_read_from_logs() -> None:
    log = (
        "2026-01-01 INFO snapworker.process: settings: PREFETCH=5000 LINGER_MS=250 AUTH_TOKEN=set\n"
        'x INFO snapworker.worker: worker totals {"batches_by_reason": {"full": 2}}\n'
    )
    assert parse_totals(log, "worker totals ") == {"batches_by_reason": {"full": 2}}
    assert parse_totals(log, "baseline totals ") is None
    assert parse_settings_line(log) == {"PREFETCH": "5000", "LINGER_MS": "250", "AUTH_TOKEN": "set"}


def test_only_loopback_is_allowed() -> None:
    check_loopback("amqp://guest:guest@127.0.0.1:5672/")
    check_loopback("http://localhost:8080")
    with pytest.raises(SystemExit):
        check_loopback("amqp://guest:guest@10.0.0.5:5672/")


def test_backlog_is_round_robin_and_orders_rotate() -> None:
    messages = list(backlog(4, 2, "t"))
    assert messages[0] == (b'{"project_id":"p000-t","desktop_ids":["d-t-0000000"]}', "0")
    assert b"p001-t" in messages[3][0]
    assert rotated(("w", "a", "b"), 1) == ["a", "b", "w"]


def test_summary_verdicts_on_synthetic_runs() -> None:
    def system(rate: float, calls: int) -> dict[str, object]:
        return {
            "expected": 1000,
            "outcome": "ok",
            "request_queue_after": {"ready": 0, "unacked": 0},
            "requests_per_s": rate,
            "economy": 10 / calls,
            "calls_minimum": 10,
            "sim": {"calls_total": calls},
        }

    runs = [{"worker": system(1300.0, 10), "noapi": system(1000.0, 1), "perapi": system(400.0, 1000)}]
    rows, medians = summarize({"throughput": runs})
    verdicts = {row.baseline.split(":")[0]: row.verdict for row in rows if row.figure.startswith("throughput")}
    assert verdicts == {"(a) no-API loop": "PASS", "(b) per-message API": "PASS"}
    assert medians["throughput_ratio_vs_noapi"]["median"] == pytest.approx(1.3)
    assert next(r for r in rows if r.figure.startswith("API economy")).verdict == "PASS"
