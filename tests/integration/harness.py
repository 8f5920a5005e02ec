"""A test's view of the broker: publish requests like a client would, collect every result, count duplicates."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from types import TracebackType
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from snapworker.amqp import declare_topology
from snapworker.models import SnapshotResult
from snapworker.settings import Settings


class Received:
    """One message read from a result, error, reply or dead-letter queue."""

    def __init__(self, queue: str, message: AbstractIncomingMessage) -> None:
        self.queue = queue
        self.body = message.body
        self.headers = dict(message.headers or {})
        self.correlation_id = message.correlation_id
        self.persistent = message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT

    @property
    def result(self) -> SnapshotResult:
        return SnapshotResult.model_validate_json(self.body)


class BrokerProbe:
    """Publishes raw test messages and collects what arrives on the queues a test watches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.received: list[Received] = []
        self._arrived = asyncio.Condition()
        self._declared: set[str] = set()
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> BrokerProbe:
        self._conn = await aio_pika.connect(self.settings.amqp_url.get_secret_value())
        self._channel = await self._conn.channel(publisher_confirms=True)
        await declare_topology(self._channel, self.settings)
        s = self.settings
        self._declared |= {s.request_queue, s.result_queue, s.error_queue, s.dead_letter_queue}
        for queue in (s.result_queue, s.error_queue, s.dead_letter_queue):
            await self.watch(queue, declare=False)
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        assert self._conn is not None
        cleanup = await self._conn.channel()
        for name in self._declared:
            await cleanup.queue_delete(name)
        await self._conn.close()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None
        return self._channel

    async def watch(self, queue: str, *, declare: bool = True) -> None:
        """Collect every message that arrives on ``queue`` (declared here, deleted at the end)."""
        assert self._conn is not None
        channel = await self._conn.channel()
        source = await channel.declare_queue(queue, durable=True) if declare else await channel.get_queue(queue)
        self._declared.add(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with self._arrived:
                self.received.append(Received(queue, message))
                self._arrived.notify_all()

        await source.consume(on_message, no_ack=True)

    async def publish(self, body: dict[str, Any] | bytes, **properties: Any) -> None:
        """Publish one request message (a dict becomes JSON) with the given AMQP properties."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        properties.setdefault("content_type", "application/json")
        await self.channel.default_exchange.publish(
            aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **properties),
            routing_key=self.settings.request_queue,
        )

    async def publish_many(self, bodies: list[dict[str, Any]], **properties: Any) -> None:
        await asyncio.gather(*(self.publish(b, **properties) for b in bodies))

    def on(self, queue: str) -> list[Received]:
        return [r for r in self.received if r.queue == queue]

    def results(self) -> list[SnapshotResult]:
        """Results from every queue but the dead-letter queue."""
        return [r.result for r in self.received if r.queue != self.settings.dead_letter_queue]

    async def wait_for(self, count: int, *, queue: str | None = None, timeout: float = 30.0) -> list[Received]:
        """Wait until ``count`` messages arrived (on ``queue``, or anywhere but the dead-letter queue)."""
        deadline = time.monotonic() + timeout

        def matching() -> list[Received]:
            if queue is not None:
                return self.on(queue)
            return [r for r in self.received if r.queue != self.settings.dead_letter_queue]

        async with self._arrived:
            while len(matching()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"waited {timeout} s for {count} messages, got {len(matching())}")
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
                except TimeoutError:
                    continue
        return matching()

    async def queue_depth(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    def duplicates(self) -> int:
        counts = Counter(r.request_id for r in self.results())
        return sum(n - 1 for n in counts.values())
