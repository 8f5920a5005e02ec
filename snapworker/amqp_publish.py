"""Publishing many messages in one go on an aiormq channel, each with its own publisher confirm.

Why this exists: a batch of 100 desktops finishes up to 100 requests at once, and each needs its result
published and confirmed. aiormq's ``basic_publish`` takes the channel lock, opens a timeout scope, marshals
and queues one write per message; with hundreds in flight, that bookkeeping was a third of the worker's CPU
(profiled with py-spy). Here one lock acquisition and one write carry the whole group, while every message still
gets its own delivery tag, confirm future and return handling, exactly as ``basic_publish`` sets them up.
Measured on 2 cores: about 75 µs of CPU per message instead of about 250 µs.

This relies on aiormq 7's channel internals (``lock``, ``delivery_tag``, ``confirmations``,
``message_id_delivery_tag``, ``write_queue``, ``create_future``); ``tests/test_amqp_publish.py`` fails loudly
if an aiormq upgrade moves them. Only ``amqp.py`` calls it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import getrandbits
from uuid import UUID

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["REQUIRED_CHANNEL_ATTRIBUTES", "Outgoing", "publish_confirmed"]

#: What publish_confirmed needs of an aiormq channel (checked by a test against the installed aiormq).
REQUIRED_CHANNEL_ATTRIBUTES = (
    "lock",
    "delivery_tag",
    "confirmations",
    "message_id_delivery_tag",
    "write_queue",
    "create_future",
    "number",
    "max_content_size",
    "publisher_confirms",
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One persistent message to publish to a queue through the default exchange."""

    body: bytes
    queue: str
    properties: spec.Basic.Properties


async def publish_confirmed(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> list[BaseException | None]:
    """Publish ``messages`` (mandatory) and wait for every confirm; one outcome per message, in order.

    ``None`` is a confirmed message; otherwise the exception ``basic_publish`` would have raised for it
    (``PublishError`` when returned unroutable, ``DeliveryError`` when nacked, a channel error when it closed).
    """
    if not channel.publisher_confirms:
        raise ValueError("publish_confirmed needs a channel with publisher confirms")
    futures: list[asyncio.Future[object]] = []
    frames: list[object] = []
    async with channel.lock:
        # nothing below awaits until the write is queued: tags, futures and frames stay in step
        for message in messages:
            if len(message.body) >= channel.max_content_size:
                raise ValueError("message larger than one frame: use basic_publish")
            channel.delivery_tag += 1
            tag = channel.delivery_tag
            properties = message.properties
            if not properties.message_id:
                # returns are matched to their publish by message_id, as basic_publish does
                properties.message_id = UUID(int=getrandbits(128), version=4).hex
            message_id = properties.message_id
            future: asyncio.Future[object] = channel.create_future()
            channel.confirmations[tag] = future
            channel.message_id_delivery_tag[message_id] = tag
            future.add_done_callback(_forgetter(channel, message_id, tag))
            futures.append(future)
            frames += (
                spec.Basic.Publish(exchange="", routing_key=message.queue, mandatory=True),
                ContentHeader(properties=properties, body_size=len(message.body)),
                ContentBody(message.body),
            )
        await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))  # type: ignore[arg-type]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    return [outcome if isinstance(outcome, BaseException) else None for outcome in outcomes]


def _forgetter(channel: aiormq.Channel, message_id: str, tag: int) -> Callable[[asyncio.Future[object]], None]:
    def forget(_: asyncio.Future[object]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            del channel.message_id_delivery_tag[message_id]

    return forget
