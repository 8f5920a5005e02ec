"""How ``snapworker top`` draws a frame: within 80 columns, nothing wrapped or cut, held requests never hidden."""

from __future__ import annotations

import re
from dataclasses import replace

from rich.console import Console

from snapworker.tools.top_draw import QUEUE_HEADERS, WORKER_HEADERS, draw
from snapworker.tools.top_figures import Frame, QueueRow, WorkerRow

PREFIX = "production.snapshots.eu-west-0.snapworker"  # a long, realistic queue-name prefix


def _busy_frame() -> Frame:
    queues = [QueueRow(f"{PREFIX}.requests", 1_234_567, 300, 12, -1_234.5)]
    queues += [QueueRow(f"{PREFIX}.requests.p{p:03d}", 98_765, 100, 4, 12.5) for p in range(4)]
    queues += [QueueRow(f"{PREFIX}.results", 0, 0, 1, 0.0), QueueRow(f"{PREFIX}.dead-letter", None)]
    workers = [
        WorkerRow(
            f"http://snapworker-{n}.snapworker.prod.svc.cluster.local:9108/metrics",
            held=12_345,
            urgent=n,
            in_flight=8,
            requests_per_s=1_234.5,
            calls_per_s=12.3,
            desktops_per_call=99.5,
            rate=12.5,
            throttled=n == 1,
        )
        for n in range(3)
    ]
    workers.append(WorkerRow("http://10.0.0.9:9108/metrics", "unreachable (ClientConnectorError)"))
    workers.append(WorkerRow("http://10.0.0.10:9108/metrics", "HTTP 503"))
    return Frame("12:00:00", 2.0, tuple(queues), workers=tuple(workers))


def _text(frame: Frame, width: int = 80) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - the console owns it
    console.print(draw(frame, width))
    return console.export_text()


def _cells(text: str, first: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(first)]
    return [cell.strip() for cell in line.split("│")]


def _names(text: str) -> list[str]:
    return [line.split("│")[0].strip() for line in text.splitlines() if "│" in line]


def test_every_line_of_a_busy_frame_fits_80_columns() -> None:
    lines = _text(_busy_frame()).splitlines()
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)


def test_every_header_is_drawn_whole_at_80_columns() -> None:
    text = _text(_busy_frame())
    assert re.search(r"\s+│\s+".join(QUEUE_HEADERS), text), text
    assert re.search(r"\s+│\s+".join(WORKER_HEADERS), text), text


def test_every_row_keeps_all_its_columns_on_one_line_at_80_columns() -> None:
    lines = _text(_busy_frame()).splitlines()
    assert sum(line.count("│") == len(QUEUE_HEADERS) - 1 for line in lines) == 1 + 7  # header and 7 queues
    assert sum(line.count("│") == len(WORKER_HEADERS) - 1 for line in lines) == 1 + 5 + 1  # and the total


def test_a_long_queue_name_loses_its_start_and_keeps_its_end() -> None:
    names = _names(_text(_busy_frame()))
    assert [n for n in names if n.startswith("…") and n.endswith((".requests", ".p003"))] == names[1:2] + names[5:6]


def test_a_worker_is_named_by_its_hosts_first_label_and_its_port() -> None:
    names = _names(_text(_busy_frame(), width=120))
    assert names[names.index("WORKER") + 1 :][:5] == [f"snapworker-{n}:9108" for n in range(3)] + [
        "10.0.0.9:9108",
        "10.0.0.10:9108",
    ]


def test_a_long_worker_name_keeps_what_tells_it_apart_at_80_columns() -> None:
    names = _names(_text(_busy_frame()))
    assert [n[-7:] for n in names[names.index("WORKER") + 1 :][:3]] == ["-0:9108", "-1:9108", "-2:9108"]


def test_the_requests_a_worker_holds_are_shown_with_their_total() -> None:
    cells = _cells(_text(_busy_frame()), "all")
    assert cells[1:4] == ["37,035", "3", "24"]  # HELD, URG, BATCHES of the three workers that answered


def test_the_urgent_requests_each_worker_holds_are_shown() -> None:
    text = _text(_busy_frame())
    urgent = [line.split("│")[2].strip() for line in text.splitlines() if re.search(r"-\d:9108 ", line)]
    assert urgent == ["0", "1", "2"]


def test_the_urgent_column_is_drawn_only_while_a_worker_holds_urgent_requests() -> None:
    busy = _busy_frame()
    calm = replace(busy, workers=tuple(replace(w, urgent=0) for w in busy.workers))
    text = _text(calm)
    assert "URG" not in text
    assert re.search(r"\s+│\s+".join(h for h in WORKER_HEADERS if h != "URG"), text), text
    names = _names(text)
    assert names[names.index("WORKER") + 1 :][:3] == [f"…worker-{n}:9108" for n in range(3)]  # the room is theirs


def test_a_throttled_worker_says_so() -> None:
    text = _text(_busy_frame())
    states = [line.split("│")[-1].strip() for line in text.splitlines() if re.search(r"-\d:9108 ", line)]
    assert states == ["ok", "throttled", "ok"]


def test_a_worker_that_does_not_answer_is_down_with_no_figures() -> None:
    cells = _cells(_text(_busy_frame(), width=120), "10.0.0.9:9108")
    assert cells[1:] == ["-"] * 7 + ["down"]


def test_unacked_counts_are_unknown_not_zero_without_the_management_api() -> None:
    frame = Frame("12:00:00", 2.0, (QueueRow("rq", 0, None, 1),))
    text = _text(frame)
    assert _cells(text, "rq")[2] == "?"
    assert "--management URL" in text


def test_unacked_counts_from_the_management_api_are_shown() -> None:
    frame = Frame("12:00:00", 2.0, (QueueRow("rq", 0, 300, 1),), management=True)
    text = _text(frame)
    assert _cells(text, "rq")[1:3] == ["0", "300"]
    assert "UNACKED ?" not in text


def test_a_frame_while_the_broker_is_away_says_for_how_long_and_fits_80_columns() -> None:
    problem = "cannot reach RabbitMQ at amqp://guest:***@rabbitmq.example:5672/: " + "x" * 150
    text = _text(Frame("12:00:00", 2.0, broker_problem=problem, broker_down_s=42.4, workers=_busy_frame().workers))
    assert "broker unreachable for 42 s" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert re.search(r"\s+│\s+".join(WORKER_HEADERS), text), text  # the workers are still shown
