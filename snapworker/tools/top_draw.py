"""How ``snapworker top`` draws a :class:`~snapworker.tools.top_figures.Frame` with rich, within a width.

Every frame fits the width it is drawn at (80 columns included) without wrapping a row or cutting a column:
the tables have no outer border, numbers are short, and only the first column (queue or worker names) gives
way, losing the *start* of a long name (``…ker.requests.p003``), since names differ at their ends. A worker is
named by its host's first label and its port (``snapworker-1:9108`` for
``http://snapworker-1.snapworker.prod.svc:9108/metrics``). A missing figure is ``-``; a figure nobody can know
without the management API is ``?``. The URG column (urgent requests held) is drawn only while a worker holds
some: the rest of the time, the names keep its room.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from snapworker.tools.top_figures import Frame, QueueRow, WorkerRow

__all__ = ["QUEUE_HEADERS", "WORKER_HEADERS", "draw"]

QUEUE_HEADERS = ("QUEUE", "READY", "UNACKED", "CONSUMERS", "READY/S")
WORKER_HEADERS = ("WORKER", "HELD", "URG", "BATCHES", "REQ/S", "CALLS/S", "D/CALL", "RATE", "STATE")
_URG = WORKER_HEADERS.index("URG")
_NONE = "-"
_MIN_NAME = 8
# " │ " between columns, no outer edge or padding
_GAP = 3


def draw(frame: Frame, width: int) -> RenderableType:
    """The frame as one renderable, to print or to hand to ``rich.live.Live``."""
    every = f"every {frame.interval_s:g} s"
    parts: list[RenderableType] = [Text(f"snapworker top  {frame.clock}  {every}", style="bold")]
    if frame.broker_problem is not None:
        parts.append(
            Text(
                f"broker unreachable for {frame.broker_down_s:.0f} s, trying again {every}: {frame.broker_problem}",
                style="bold red",
            )
        )
    else:
        parts.append(_table(QUEUE_HEADERS, [_queue_cells(q) for q in frame.queues], width))
        caption = _queue_caption(frame)
        if caption:
            parts.append(Text(caption, style="dim"))
    if frame.workers:
        rows = [_worker_cells(w) for w in frame.workers]
        if len(frame.workers) > 1:
            rows.append(_total_cells(frame.workers))
        headers = list(WORKER_HEADERS)
        if not any(w.urgent for w in frame.workers):  # URG only while urgent requests wait: names keep the room
            del headers[_URG]
            for cells in rows:
                del cells[_URG]
        parts.append(Text(""))
        parts.append(_table(headers, rows, width))
    return Group(*parts)


def _queue_caption(frame: Frame) -> str:
    if frame.management_problem is not None:
        return f"UNACKED ?: {frame.management_problem}"
    if not frame.management and frame.queues:
        return "UNACKED ?: only RabbitMQ's management API counts them (--management URL)"
    return ""


def _queue_cells(row: QueueRow) -> list[str]:
    if row.ready is None:
        return [row.name, "missing", _NONE, _NONE, _NONE]
    return [
        row.name,
        f"{row.ready:,}",
        "?" if row.unacked is None else f"{row.unacked:,}",
        _NONE if row.consumers is None else f"{row.consumers:,}",
        _NONE if row.ready_per_s is None else f"{row.ready_per_s:+,.1f}",
    ]


def _worker_cells(row: WorkerRow) -> list[str]:
    name = _label(row.url)
    if row.problem is not None:
        state = row.problem if row.problem.startswith("HTTP") else "bad data"
        if row.problem.startswith("unreachable"):
            state = "down"
        return [name, _NONE, _NONE, _NONE, _NONE, _NONE, _NONE, _NONE, state]
    if row.throttled:
        state = "[yellow]throttled[/yellow]"
    elif row.consuming is False:
        state = "[red]detached[/red]"
    else:
        state = "ok"
    return [
        name,
        f"{row.held:,}",
        f"{row.urgent:,}",
        f"{row.in_flight:,}",
        _number(row.requests_per_s),
        _number(row.calls_per_s),
        _number(row.desktops_per_call),
        _NONE if row.rate is None else f"{row.rate:.2f}",
        state,
    ]


def _total_cells(rows: Sequence[WorkerRow]) -> list[str]:
    up = [r for r in rows if r.problem is None]
    return [
        "all",
        f"{sum(r.held for r in up):,}",
        f"{sum(r.urgent for r in up):,}",
        f"{sum(r.in_flight for r in up):,}",
        _number(sum(r.requests_per_s or 0.0 for r in up)),
        _number(sum(r.calls_per_s or 0.0 for r in up)),
        "",
        "",
        "",
    ]


def _number(value: float | None) -> str:
    if value is None:
        return _NONE
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"  # a tenth matters only in small figures


def _label(url: str) -> str:
    # What tells workers apart: their host (a DNS name's first label: the rest is the fleet's domain) and port.
    parts = urlsplit(url)
    host = parts.hostname or url
    if not host.replace(".", "").isdigit() and ":" not in host:  # not an IP address
        host = host.split(".")[0]
    return host if parts.port is None else f"{host}:{parts.port}"


def _table(headers: Sequence[str], rows: list[list[str]], width: int) -> Table:
    rest = [max([len(headers[i])] + [Text.from_markup(r[i]).cell_len for r in rows]) for i in range(1, len(headers))]
    room = max(width - sum(rest) - _GAP * (len(headers) - 1), _MIN_NAME)
    table = Table(box=box.MINIMAL_HEAVY_HEAD, show_edge=False, pad_edge=False, collapse_padding=False)
    table.add_column(headers[0], no_wrap=True)
    for header in headers[1:]:
        table.add_column(header, justify="left" if header == "STATE" else "right", no_wrap=True)
    for cells in rows:
        table.add_row(Text(_fit(cells[0], room)), *cells[1:])  # a name is not markup
    return table


def _fit(name: str, room: int) -> str:
    return name if len(name) <= room else "…" + name[len(name) - room + 1 :]
