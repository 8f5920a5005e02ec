"""Consumers whose deliveries reach a plain function, in the channel's reader, without a task each.

Why this exists: aiormq runs every delivery's callback in a task of its own (created, scheduled, tracked in the
channel's future store, reaped by a done callback). The worker's callbacks never await: they hand the message
to the intake or the router's inbox and return. At full speed a worker takes each request twice (the router,
then its partition), and the task per delivery was 6-8 % of its CPU (py-spy, ``python -m bench.profile``).

Consumes are sent without waiting for the broker's consume-ok: a round trip on the consuming connection waits
behind every delivery the broker has already written to it, and a lone worker claiming 16 partitions and their
urgent twins one consume-ok at a time took 4.5 s under a backlog (measured) while its requests waited in the
partitions. A consume the broker refuses (a queue gone) closes the channel, and with it the session, as any
broker failure does.

This relies on aiormq 7.2's channel internals: ``Channel._reader`` calls ``self._on_deliver_frame`` (shadowed
here on the instance), ``_read_content`` and the private ``__get_content_header``; pyproject.toml pins aiormq to
7.2.x for that (as for publish.py), and the integration tests consume through it against a real broker.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

__all__ = ["InlineCallback", "consume_inline"]

log = logging.getLogger("snapworker.amqp")

#: Called with each delivery, in delivery order, in the channel's reader: it must not block, and should not raise.
InlineCallback = Callable[[DeliveredMessage], None]

# channel attribute holding its inline callbacks by consumer tag (set once the deliver hook is installed)
_CALLBACKS = "_snapworker_inline_callbacks"


async def consume_inline(channel: aiormq.Channel, queue: str, callback: InlineCallback) -> str:
    """Start consuming ``queue`` on ``channel`` (manual acks, under the prefetch count set last), without waiting
    for the consume-ok; the consumer's tag. Deliveries go to ``callback`` as described in the module docstring."""
    callbacks = _hooked(channel)
    tag = f"ctag{channel.number}.{uuid.uuid4().hex}"
    callbacks[tag] = callback

    async def unused(message: DeliveredMessage) -> None:  # pragma: no cover - the hook calls ``callback`` itself
        callback(message)

    # aiormq's own registry too: it is what tells a consumer alive (``tag in channel.consumers``) and what a
    # cancel or cancel-ok removes
    channel.consumers[tag] = unused
    await channel.rpc(spec.Basic.Consume(queue=queue, consumer_tag=tag, nowait=True))
    return tag


def _hooked(channel: aiormq.Channel) -> dict[str, InlineCallback]:
    callbacks: dict[str, InlineCallback] | None = getattr(channel, _CALLBACKS, None)
    if callbacks is not None:
        return callbacks
    callbacks = {}
    read_header: Callable[[], Any] = channel._Channel__get_content_header  # type: ignore[attr-defined]

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        # aiormq's _on_deliver_frame, with the callback called in place of a task created for it
        message = await channel._read_content(frame, await read_header())
        # A tag no longer in channel.consumers was cancelled: its deliveries still in flight come before the
        # cancel-ok, and are still its own (held until settled), so the callback is kept for them.
        callback = callbacks.get(frame.consumer_tag or "")
        if callback is None:
            log.warning("a delivery for unknown consumer %r on channel %d: left unsettled", frame.consumer_tag,
                        channel.number)  # fmt: skip
            return
        try:
            callback(message)
        except Exception:  # a bug in a callback must not end the channel's reader (aiormq logs it, too)
            log.exception("a delivery's callback failed (delivery tag %s)", frame.delivery_tag)

    setattr(channel, _CALLBACKS, callbacks)
    channel._on_deliver_frame = on_deliver_frame  # type: ignore[method-assign]
    return callbacks
