"""``snapworker replay``: move dead letters back to the request queue once what made them fail is fixed.

A move publishes a copy of the dead letter to the request queue (same body and properties, without the
``x-snapworker-reason`` header, with ``x-snapworker-replayed`` counting the replays), waits for the broker's
confirm, and only then acks the dead letter: at least once, never lost. A dead letter that is not moved (it does
not match the filter, ``--limit`` was reached, ``--dry-run``) goes back to the dead-letter queue untouched.

One bounded pass: it looks at no more messages than the dead-letter queue held when it started, holding each one
it keeps (unacked) until the pass ends and only then requeuing them all. Requeuing one at once would put it back
at the head, where the next ``basic.get`` would find it again: a loop over the same non-matching messages. Holding
costs memory for the messages looked at (the queue's depth at most); if the command dies, the broker requeues
them itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import TextIO

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from snapworker.amqp.copying import copy_of
from snapworker.amqp.session import REASON_HEADER
from snapworker.client import BROKER_ERRORS, open_connection
from snapworker.errors import BrokerError
from snapworker.settings import Settings, load_settings

__all__ = ["REPLAYED_HEADER", "DeadLetter", "ReplayFilter", "ReplayReport", "replay", "replay_dead_letters"]

#: Header of a replayed request: how many times it was moved back from the dead-letter queue.
REPLAYED_HEADER = "x-snapworker-replayed"
_REASON_SHOWN = 120  # characters of the reason on a printed line; the header may hold 1,000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """What the filter and the printed line look at in one dead letter."""

    message_id: str | None
    project_id: str | None
    reason: str
    replayed: int

    def line(self, verb: str) -> str:
        reason = " ".join(self.reason.split())
        if len(reason) > _REASON_SHOWN:
            reason = reason[: _REASON_SHOWN - 1] + "…"
        return f"{verb}  {self.message_id or '-'}  project={self.project_id or '-'}  reason={reason or '-'}"


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which dead letters move: all of them, unless a field is set; every set field must match.

    ``reason_contains`` is a case-insensitive substring of the ``x-snapworker-reason`` header (a dead letter
    without one has the reason ""); ``project`` is the body's ``project_id``, exactly (a body that is not a JSON
    object with one never matches).
    """

    reason_contains: str | None = None
    project: str | None = None

    def matches(self, dead: DeadLetter) -> bool:
        if self.reason_contains is not None and self.reason_contains.casefold() not in dead.reason.casefold():
            return False
        return self.project is None or dead.project_id == self.project


@dataclass
class ReplayReport:
    looked_at: int = 0
    moved: int = 0
    kept: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        return (
            f"{verb} {self.moved} of {self.looked_at} dead letter{'' if self.looked_at == 1 else 's'} looked at; "
            f"{self.kept} left in the dead-letter queue"
        )


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    try:
        body = json.loads(message.body)
    except ValueError:  # not JSON (or not UTF-8): it can still be replayed, but has no project
        body = None
    project = body.get("project_id") if isinstance(body, dict) else None
    try:
        replayed = int(_text(headers.get(REPLAYED_HEADER, 0)))
    except ValueError:
        replayed = 0
    return DeadLetter(
        message.message_id,
        project if isinstance(project, str) else None,
        _text(headers.get(REASON_HEADER, "")),
        replayed,
    )


def _copy(message: AbstractIncomingMessage, dead: DeadLetter) -> aio_pika.Message:
    headers = {k: v for k, v in (message.headers or {}).items() if k != REASON_HEADER}
    headers[REPLAYED_HEADER] = dead.replayed + 1
    return copy_of(message, headers=headers)


async def _queue_depth(channel: AbstractChannel, name: str, what: str) -> int:
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise BrokerError(f"the {what} {name!r} does not exist (snapworker check --declare creates it)") from exc
    return int(declared.declaration_result.message_count or 0)


async def replay_dead_letters(
    settings: Settings, only: ReplayFilter, *, limit: int | None, dry_run: bool, out: TextIO
) -> ReplayReport:
    """One pass over the dead-letter queue: move (or, ``dry_run``, only print) the dead letters ``only`` matches,
    at most ``limit``, printing a line for each on ``out``; every other one looked at is requeued untouched.

    Raises BrokerError when a queue is missing or the broker fails; what was moved until then stays moved, and
    the dead letter being moved stays a dead letter unless its copy was confirmed.
    """
    report = ReplayReport(dry_run=dry_run)
    held: list[AbstractIncomingMessage] = []
    conn = await open_connection(settings, "snapworker-replay")
    try:
        async with conn:
            # Passive declares that fail close their channel: check both queues on one of their own first.
            async with conn.channel(publisher_confirms=False) as check:
                await _queue_depth(check, settings.request_queue, "request queue")
            channel = await conn.channel(publisher_confirms=True)
            depth = await _queue_depth(channel, settings.dead_letter_queue, "dead-letter queue")
            queue = await channel.get_queue(settings.dead_letter_queue, ensure=False)
            try:
                while report.looked_at < depth and (limit is None or report.moved < limit):
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:  # someone else took the rest
                        break
                    report.looked_at += 1
                    dead = _describe(message)
                    matches = only.matches(dead)
                    if matches and not dry_run:
                        await _move(channel, settings.request_queue, message, dead)
                    else:
                        held.append(message)
                    if matches:
                        report.moved += 1
                        out.write(dead.line("would move" if dry_run else "moved") + "\n")
                        out.flush()
            finally:
                if held and not channel.is_closed:
                    # multiple: one nack requeues everything held (and not yet settled) on this channel
                    await held[-1].nack(requeue=True, multiple=True)
                report.kept = len(held)
    except aiormq.exceptions.PublishError as exc:
        raise BrokerError(f"the request queue took no copy (it went unrouted): {exc!r}") from exc
    except aiormq.exceptions.DeliveryError as exc:
        raise BrokerError(f"the broker refused a copy (nack); its dead letter stays: {exc!r}") from exc
    except BROKER_ERRORS as exc:
        raise BrokerError(f"replaying failed: {exc!r}") from exc
    return report


async def _move(
    channel: AbstractChannel, request_queue: str, message: AbstractIncomingMessage, dead: DeadLetter
) -> None:
    # Confirmed (publisher confirms are on, mandatory returns an unroutable copy) before the ack: never lost.
    await channel.default_exchange.publish(_copy(message, dead), routing_key=request_queue, mandatory=True)
    await message.ack()


def replay(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker replay``: exit 0 when the pass ended (whatever it moved), 1 on a broker problem."""
    from snapworker.tools.commands import _run  # the operator commands' shared runner: errors become one line

    settings = load_settings()
    only = ReplayFilter(reason_contains=args.reason_contains, project=args.project)

    async def work() -> int:
        report = await replay_dead_letters(settings, only, limit=args.limit, dry_run=args.dry_run, out=out)
        out.write(report.summary() + "\n")
        return 0

    return _run("replay", work(), err)
