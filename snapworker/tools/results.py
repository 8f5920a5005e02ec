"""``snapworker results``: read results off their queues and print them, a table row or a JSON line each.

Reading consumes: a printed result is acked and so removed from its queue, exactly as a service that reads
results would. Run it on queues nobody else relies on (a reply queue of your own, or the result and error
queues while no service consumes them), or results meant for someone else end up on your terminal instead.
A message is acked only after it was printed; with ``--count N`` at most N are taken, and the rest stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from snapworker.contract.models import SnapshotCompletion, SnapshotResult
from snapworker.tools.broker import BrokerTools, ReceivedResult

__all__ = ["HEADER", "completion_row", "follow_results", "result_json", "result_row"]

# (title, width); the last column takes what is left of the line
_COLUMNS = (("FINISHED (UTC)", 24), ("STATUS", 9), ("REQUEST ID", 36), ("PROJECT", 32), ("DESKTOPS", 8), ("JOBS", 4))
HEADER = "  ".join(f"{title:<{width}}" for title, width in _COLUMNS) + "  ERRORS"
_ERROR_CHARS = 80


def result_json(result: SnapshotResult, *, indent: int | None = None) -> str:
    """The result as JSON, as the wire carries it: ``truncated`` only when true (see the result schema)."""
    return result.model_dump_json(indent=indent, exclude=None if result.truncated else {"truncated"})


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def result_row(result: SnapshotResult) -> str:
    """One fixed-width line: when, status, request, project, desktops covered, jobs, and the first error."""
    desktops = sum(len(j.desktop_ids) for j in result.jobs) + sum(len(e.desktop_ids) for e in result.errors)
    cells = (
        result.model_dump(mode="json")["finished_at"],
        result.status,
        result.request_id,
        result.project_id or "-",
        str(desktops),
        str(len(result.jobs)),
    )
    row = "  ".join(f"{_fit(cell, width):<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    return row + "  " + _errors_cell(result)


def completion_row(completion: SnapshotCompletion) -> str:
    """A completion in the result table's columns: the desktops it covers, its jobs, and the first failure."""
    jobs = {d.job_id for d in completion.desktops}
    cells = (
        completion.model_dump(mode="json")["finished_at"],
        completion.status,
        completion.request_id,
        completion.project_id,
        str(len(completion.desktops)),
        str(len(jobs)),
    )
    row = "  ".join(f"{_fit(cell, width):<{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    bad = [d for d in completion.desktops if d.outcome != "succeeded"]
    if not bad:
        return row + "  -"
    first = bad[0]
    text = f"{first.desktop_id} {first.outcome}: {first.error_code or '-'} {first.fail_reason or ''}".strip()
    if len(bad) > 1:
        text += f" (+{len(bad) - 1} more)"
    return row + "  " + _fit(" ".join(text.split()), _ERROR_CHARS)


def _errors_cell(result: SnapshotResult) -> str:
    if not result.errors:
        return "-"
    first = result.errors[0]
    status = f" {first.http_status}" if first.http_status is not None else ""
    text = f"{first.error_code}{status}: {first.error_msg}"
    if len(result.errors) > 1:
        text += f" (+{len(result.errors) - 1} more)"
    return _fit(" ".join(text.split()), _ERROR_CHARS)


async def follow_results(
    tools: BrokerTools,
    queues: Sequence[str],
    *,
    out: TextIO,
    err: TextIO,
    jsonl: bool = False,
    count: int | None = None,
    max_seconds: float | None = None,
) -> int:
    """Print (and consume) results of ``queues`` until ``count`` arrived or ``max_seconds`` passed; return how
    many were read. A message that is not a valid result is reported on ``err`` (and consumed too)."""
    header = [] if jsonl else [HEADER]  # written with the first row, so an error comes alone

    def show(received: ReceivedResult) -> None:
        if received.completion is not None:
            while header:
                out.write(header.pop() + "\n")
            done = received.completion
            out.write((done.model_dump_json() if jsonl else completion_row(done)) + "\n")
            out.flush()
            return
        if received.result is None:
            snippet = received.body[:200].decode("utf-8", errors="replace")
            err.write(f"{received.queue}: not a SnapshotResult ({received.problem}): {snippet}\n")
            err.flush()
            return
        while header:
            out.write(header.pop() + "\n")
        out.write((result_json(received.result) if jsonl else result_row(received.result)) + "\n")
        out.flush()  # followed through a pipe: every row as it comes

    return await tools.follow(queues, show, count=count, max_seconds=max_seconds)
