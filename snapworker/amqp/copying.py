"""A message received, as a new message to publish elsewhere with the same body and properties.

Moving a message between queues (the tracking queues' migration, a dead letter's replay) is a get, a publish of
a copy and an ack; the copy keeps every property the broker accepts from a publisher.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

__all__ = ["copy_of"]


def copy_of(message: AbstractIncomingMessage, *, headers: Mapping[str, Any] | None = None) -> aio_pika.Message:
    """``message``'s body and properties (persistent if it did not say), with ``headers`` instead of its own when
    given. ``user_id`` is left out: the broker refuses one other than the publishing connection's own user."""
    return aio_pika.Message(
        message.body,
        headers=dict(message.headers or {}) if headers is None else dict(headers),
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=message.delivery_mode or aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
