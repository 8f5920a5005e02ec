"""``snapworker publish``: queue one request from arguments, or many from a JSONL file or stdin.

Every request is validated before it is sent; an invalid line is reported with its line number and skipped,
the others are published. Confirms are pipelined: up to ``in_flight`` messages wait for theirs at once, so a
file goes at broker speed rather than one round trip per line. What a command prints on stdout is the count of
confirmed messages (or, with ``--wait``, the result); problems go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from pydantic import ValidationError

from snapworker.client import SnapshotClient, _check_shortstr
from snapworker.contract.intake import validation_problems
from snapworker.contract.models import DiskType, SnapshotRequest, SnapshotResult
from snapworker.contract.priority import Priority, amqp_priority
from snapworker.errors import BrokerError, InvalidMessage
from snapworker.settings import Settings
from snapworker.words import plural

__all__ = ["FileReport", "Progress", "dry_run", "publish_lines", "request_from_options"]


@dataclass
class FileReport:
    """What publishing a file did. ``unconfirmed`` messages may or may not be queued (the broker failed)."""

    confirmed: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)
    unconfirmed: int = 0
    error: BrokerError | None = None

    @property
    def ok(self) -> bool:
        return not self.invalid and self.error is None

    def summary(self) -> str:
        text = f"confirmed {plural(self.confirmed, 'message')}"
        if self.invalid:
            text += f"; {plural(len(self.invalid), 'invalid line')} not published"
        if self.error is not None:
            text += f"; stopped: {self.error} ({self.unconfirmed} sent but not confirmed: they may be queued)"
        return text


class Progress:
    """A one-line progress display on a terminal (stderr); silent when ``stream`` is not a TTY."""

    def __init__(self, stream: TextIO, total_bytes: int | None, *, clock: Callable[[], float] = time.monotonic):
        self._stream = stream
        self._total = total_bytes
        self._enabled = stream.isatty()
        self._clock = clock
        self._shown_at = 0.0

    def update(self, done_bytes: int, report: FileReport, *, final: bool = False) -> None:
        now = self._clock()
        if not self._enabled or (not final and now - self._shown_at < 0.1):  # at most 10 redraws a second
            return
        self._shown_at = now
        counts = f"{report.confirmed} confirmed, {len(report.invalid)} invalid"
        if self._total:
            share = min(done_bytes / self._total, 1.0)
            filled = int(share * 30)
            line = f"[{'#' * filled}{'.' * (30 - filled)}] {share:4.0%}  {counts}"
        else:
            line = counts
        self._stream.write("\r" + line + ("\n" if final else ""))
        self._stream.flush()


async def publish_lines(
    client: SnapshotClient,
    source: BinaryIO,
    *,
    reply_to: str | None = None,
    in_flight: int = 256,
    on_invalid: Callable[[int, str], None] = lambda n, problem: None,
    progress: Progress | None = None,
) -> FileReport:
    """Publish every valid line of ``source`` (JSON Lines, one SnapshotRequest a line; blank lines skipped).

    A regular file is read in the event loop (a buffered read of a local file returns at once); anything else
    (a pipe, a terminal) a line at a time in a thread, so a slow producer never stalls the event loop and the
    connection's heartbeats. Stops reading at the first broker failure: the rest is not sent.
    """
    report = FileReport()
    slots = asyncio.Semaphore(in_flight)
    tasks: set[asyncio.Task[None]] = set()
    done_bytes = 0

    def invalid(number: int, problem: str) -> None:
        report.invalid.append((number, problem))
        on_invalid(number, problem)

    async def send(number: int, request: SnapshotRequest) -> None:
        try:
            await client.publish(request, reply_to=reply_to)
        except InvalidMessage as exc:  # valid JSON, but too large for MAX_MESSAGE_BYTES
            invalid(number, str(exc))
        except BrokerError as exc:
            report.unconfirmed += 1
            report.error = report.error or exc
        else:
            report.confirmed += 1
        finally:
            slots.release()

    number = 0
    in_thread = not stat.S_ISREG(os.fstat(source.fileno()).st_mode)
    while report.error is None:
        line = await asyncio.to_thread(source.readline) if in_thread else source.readline()
        if not line:
            break
        number += 1
        done_bytes += len(line)
        if not line.strip():
            continue
        try:
            request = SnapshotRequest.model_validate_json(line)
        except ValidationError as exc:
            invalid(number, "; ".join(validation_problems(exc)))
            continue
        await slots.acquire()
        task = asyncio.create_task(send(number, request))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        if progress is not None:
            progress.update(done_bytes, report)
    if tasks:
        await asyncio.gather(*tasks)
    if progress is not None:
        progress.update(done_bytes, report, final=True)
    return report


async def publish_file(
    client: SnapshotClient, path: str, *, reply_to: str | None, in_flight: int, err: TextIO
) -> FileReport:
    """Publish ``path`` (``-``: stdin), reporting invalid lines and progress on ``err``."""

    def on_invalid(number: int, problem: str) -> None:
        err.write(f"line {number}: {problem}\n")

    if path == "-":
        progress = Progress(err, None)
        return await publish_lines(
            client, sys.stdin.buffer, reply_to=reply_to, in_flight=in_flight, on_invalid=on_invalid, progress=progress
        )
    source = await asyncio.to_thread(open, path, "rb")  # a file on a network mount can be slow to open
    with source:
        # a regular file's size gives a percentage; a pipe or device has none
        progress = Progress(err, os.fstat(source.fileno()).st_size or None)
        return await publish_lines(
            client, source, reply_to=reply_to, in_flight=in_flight, on_invalid=on_invalid, progress=progress
        )


async def publish_one(
    client: SnapshotClient, request: SnapshotRequest, *, reply_to: str | None, wait: bool, wait_s: float | None
) -> tuple[str, SnapshotResult | None]:
    """Publish one request; with ``wait``, wait for its result over the client's reply queue, ``wait_s`` at
    most (None: the client's default). Returns the correlation id and the result, if waited for."""
    if not wait:
        return await client.publish(request, reply_to=reply_to), None
    result = await client.create_snapshots(
        request.project_id,
        request.desktop_ids,
        disk_type=request.disk_type,
        system_disk_snapshot=request.system_disk_snapshot,
        data_disk_snapshot=request.data_disk_snapshot,
        request_id=request.request_id,
        priority=request.priority,
        timeout=wait_s,
    )
    return result.correlation_id or "", result


def request_from_options(
    project: str,
    desktops: tuple[str, ...],
    *,
    disk_type: DiskType | None = None,
    request_id: str | None = None,
    snapshot_name: str | None = None,
    description: str | None = None,
    priority: Priority | None = None,
) -> SnapshotRequest:
    """The request ``publish --project`` sends; ValidationError when the contract refuses it.

    ``snapshot_name`` and ``description`` name the snapshots of the disks ``disk_type`` covers: the system disk's
    (``system_disk_snapshot``) for SYSTEM_DISK and when no type is given (the API's default is the system disk),
    the data disks' (``data_disk_snapshot``) for DATA_DISKS, both for ALL.
    """
    fields: dict[str, object] = {"project_id": project, "desktop_ids": desktops}
    fields |= {"disk_type": disk_type, "request_id": request_id, "priority": priority}
    if snapshot_name is not None or description is not None:
        # validated as part of the request, so a problem is named by its place (system_disk_snapshot.name)
        info = {"name": snapshot_name, "description": description}
        if disk_type in (None, "SYSTEM_DISK", "ALL"):
            fields["system_disk_snapshot"] = info
        if disk_type in ("DATA_DISKS", "ALL"):
            fields["data_disk_snapshot"] = info
    return SnapshotRequest.model_validate(fields)


def dry_run(request: SnapshotRequest, settings: Settings, *, reply_to: str | None) -> str:
    """What :meth:`SnapshotClient.publish` would send for ``request``, as text: the queue, the AMQP properties
    (JSON; ``priority`` only when the request has one) and the exact body, a line each. Raises InvalidMessage as
    publishing would (a body over MAX_MESSAGE_BYTES, a ``reply_to`` too long for AMQP), so a dry run that passes is
    one the client accepts."""
    # The client's own encoder and checks (package-internal), on a client that never connects: the body printed
    # is the one publish sends; the properties are those of SnapshotClient._send (a test compares the two).
    client = SnapshotClient(settings)
    body = client._encode(request)
    correlation_id = uuid.uuid4().hex
    _check_shortstr(correlation_id=correlation_id, reply_to=reply_to)
    properties = {
        "content_type": "application/json",
        "delivery_mode": 2,
        "message_id": request.request_id or correlation_id,
        "correlation_id": correlation_id,
        "reply_to": reply_to,
    }
    priority = amqp_priority(request.priority)
    if priority is not None:
        properties["priority"] = priority
    return (
        f"queue: {client._routing_key(request)} (default exchange, mandatory, publisher-confirmed)\n"
        f"properties: {json.dumps(properties)}\n"
        f"body: {body.decode()}\n"
    )
