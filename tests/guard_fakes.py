"""A broker-free stand-in for AmqpSession where results are published and messages settled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

from snapworker.amqp.session import AmqpSession, Delivery, Message
from snapworker.contract.intake import Envelope
from snapworker.errors import BrokerError

#: What one AMQP frame carries of a body with RabbitMQ's default frame_max (131,072 less the frame overhead).
FRAME_BODY_MAX = 131_072 - 8


class FakeSession:
    """Records what was published, settled and dead-lettered.

    Like ``amqp_publish.publish_confirmed``, ``publish_many`` raises ValueError for a group with a body over one
    frame; ``outcome(message)`` decides each message's outcome (or raises, like a bug in the publish path).
    """

    def __init__(self, outcome: Callable[[Message], BrokerError | None] = lambda _: None) -> None:
        self.lost = asyncio.Event()
        self.outcome = outcome
        self.published: list[Message] = []
        self.settled: list[tuple[Delivery, str]] = []
        self.dead_letters: list[tuple[Delivery, str]] = []

    async def publish_many(self, messages: Sequence[Message]) -> list[BrokerError | None]:
        if any(len(m.body) >= FRAME_BODY_MAX for m in messages):
            raise ValueError("message larger than one frame: use basic_publish")
        outcomes = [self.outcome(m) for m in messages]
        self.published += [m for m, o in zip(messages, outcomes, strict=True) if o is None]
        return outcomes

    def settle(self, deliveries: list[Delivery], how: str) -> None:
        for delivery in deliveries:
            if not delivery.settled:
                delivery.settled = True
                self.settled.append((delivery, how))

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> int:
        moved = 0
        for delivery, reason in deliveries:
            if not delivery.settled:
                delivery.settled = True
                self.dead_letters.append((delivery, reason))
                moved += 1
        return moved

    def delivery(self, body: bytes, *, tag: int = 1, message_id: str | None = None) -> Delivery:
        """A delivery of this session carrying ``body``."""
        return Delivery(
            envelope=Envelope(body=body, content_type="application/json", message_id=message_id),
            reply_to=None,
            tag=tag,
            session=cast(AmqpSession, self),
        )
