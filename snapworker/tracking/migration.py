"""Replacing a classic tracking queue by a quorum one without losing a message (SNAPWORKER_TRACKING_QUEUE_TYPE).

RabbitMQ never changes the type of an existing queue: it can only be deleted and declared again, and a deleted
queue takes its messages with it, those a consumer holds unacknowledged (a worker in the middle of a look)
included. So the classic tracking queue is replaced only while nobody consumes it, that is when no worker runs,
and everything in it and in the classic wait queues (the only ones that dead-letter at most once, so the only ones
that would drop a message dead-lettered into a missing queue) is moved first. Until then it is used as it is:
the quorum wait queues dead-letter into it at least once, whatever its type.

Each move takes a message (``basic.get``), publishes a copy with the broker's confirm, then acks the original: at
least once, a crash in between leaves both (a tracking unit looked at twice: its completions may come twice,
with the same ``message_id``). Nothing here is specific to tracking but the order of the steps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from snapworker.amqp.copying import copy_of

__all__ = ["move_messages", "replace_when_idle"]

log = logging.getLogger("snapworker.tracking")


async def replace_when_idle(
    channel: AbstractChannel,
    queue: str,
    arguments: dict[str, Any],
    *,
    moves: Sequence[tuple[str, str]],
    park: str,
) -> bool:
    """Declare ``queue`` again with ``arguments`` if nobody consumes it; whether it was. Before, each
    ``(source, target)`` of ``moves`` is emptied into ``target`` and deleted, then ``queue`` is emptied into
    ``park``; all targets must exist. ``channel`` must confirm publishes; it is reopened after any refusal and
    after a replacement.

    Every step leaves nothing lost if the next one fails: a consumer or a message that came in meanwhile makes
    the broker refuse to delete ``queue`` (False: it is used as it is; what was moved comes back to it through
    the wait queues). Between the delete and the declare (a round trip) a quorum queue dead-lettering into
    ``queue`` keeps its message and tries again (after 180 s on RabbitMQ 3.10.8)."""
    try:
        found = await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        await channel.reopen()
        return False  # gone meanwhile: the next declare makes it
    if found.declaration_result.consumer_count:
        return False
    for source, target in moves:
        if not await move_messages(channel, source, target) or not await _delete(channel, source, if_unused=False):
            return False
    if not await move_messages(channel, queue, park) or not await _delete(channel, queue, if_unused=True):
        return False
    # A fresh channel: RabbitMQ 3.10.8 keeps what a channel knew of the deleted classic queue, and the channel
    # crashes (closing the connection, INTERNAL_ERROR) at its first use of the new queue of the same name.
    await channel.close()
    await channel.reopen()
    await channel.declare_queue(queue, durable=True, arguments=arguments)
    return True


async def move_messages(channel: AbstractChannel, source: str, target: str) -> bool:
    """Move every message of ``source`` (none if it does not exist) into ``target`` with its properties, each
    acked only once its copy is confirmed; whether all were (a refused copy: its original is requeued)."""
    try:
        found = await channel.declare_queue(source, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        await channel.reopen()
        return True
    moved = 0
    while (message := await found.get(no_ack=False, fail=False)) is not None:
        try:
            await channel.default_exchange.publish(copy_of(message), routing_key=target, mandatory=True)
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError) as exc:
            log.warning("moving a message from %r to %r failed (%r); it stays in %r", source, target, exc, source)
            with contextlib.suppress(aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError):
                await message.nack(requeue=True)
            return False
        await message.ack()
        moved += 1
    if moved:
        log.info("moved %d tracking messages from %r to %r", moved, source, target)
    return True


async def _delete(channel: AbstractChannel, queue: str, *, if_unused: bool) -> bool:
    """Delete ``queue`` if it is empty (and unused); whether it is gone."""
    try:
        await channel.queue_delete(queue, if_unused=if_unused, if_empty=True)
    except aiormq.exceptions.ChannelPreconditionFailed:  # a message or a consumer came meanwhile
        await channel.reopen()
        return False
    except aiormq.exceptions.ChannelNotFoundEntity:
        await channel.reopen()
    return True
