"""A broker-free broker session a whole :class:`~snapworker.runtime.worker.Worker` can serve."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from snapworker.amqp.session import Delivery
from tests.guard_fakes import FakeSession


class BrokerlessSession(FakeSession):
    """Stands in for AmqpSession in ``Worker.run``: the test pushes deliveries and loses the session."""

    def __init__(self, prefetch: int = 100) -> None:
        super().__init__()
        self.prefetch = prefetch
        self.lost_reason: str | None = None
        self.consuming = False
        self.closed = False
        self.on_delivery: Callable[[Delivery], None] | None = None
        self.deliveries: list[Delivery] = []

    async def consume(self, on_delivery: Callable[[Delivery], None], *, queues: Sequence[str] | None = None) -> None:
        self.on_delivery = on_delivery
        self.consuming = True

    def consumer_attached(self) -> bool:
        return self.consuming and not self.lost.is_set()

    async def consumers_of(self, queue: str) -> int:
        return 0  # the only worker

    async def stop_consuming(self) -> None:
        self.consuming = False

    async def widen(self, prefetch: int) -> None:
        self.prefetch = prefetch

    def push(self, body: bytes, *, message_id: str | None = None, priority: int | None = None) -> Delivery:
        """Deliver ``body`` (with the AMQP ``priority`` property, if given) to the worker, as the broker would."""
        assert self.on_delivery is not None, "the worker is not consuming yet"
        delivery = self.delivery(body, tag=len(self.deliveries) + 1, message_id=message_id)
        if priority is not None:
            delivery = dataclasses.replace(delivery, envelope=dataclasses.replace(delivery.envelope, priority=priority))
        self.deliveries.append(delivery)
        self.on_delivery(delivery)
        return delivery

    def held(self) -> list[Delivery]:
        return [d for d in self.deliveries if not d.settled]

    async def settlements_sent(self) -> None:
        pass

    def lose(self, reason: str = "connection reset") -> None:
        """The broker connection broke: the broker takes back every unsettled delivery."""
        self.lost_reason = reason
        self.lost.set()

    async def close(self) -> None:
        self.closed = True
