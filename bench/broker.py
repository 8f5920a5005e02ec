"""The benchmark's side of RabbitMQ: fresh queues per system, pipelined publishing, counting, checking, deleting.

Every measured system gets queues of its own (``bench.<run id>.<system>.*``), declared exactly as the worker
declares them (durable; the request queue dead-letters to the dead-letter queue) and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from snapworker.amqp.partitioning import partition_queue, request_queues
from snapworker.amqp.topology import declare_topology
from snapworker.settings import Settings

__all__ = ["Broker", "Queues", "check_loopback", "ctl_queue_state"]

Message = tuple[bytes, str]  # body, correlation_id
#: The workers' PARTITIONS when nothing sets it: their partition queues are declared and deleted with the rest.
DEFAULT_PARTITIONS: int = Settings.model_fields["partitions"].default


def check_loopback(url: str) -> None:
    """Refuse any broker or API address that is not on this machine's loopback."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise SystemExit(f"bench: {url!r} is not a loopback address; the benchmark only talks to 127.0.0.1")


@dataclass(frozen=True)
class Queues:
    request: str
    result: str
    error: str
    dead_letter: str
    partitions: int = DEFAULT_PARTITIONS  # the workers' PARTITIONS: their partition queues are deleted too

    @classmethod
    def fresh(cls, system: str, partitions: int = DEFAULT_PARTITIONS) -> Queues:
        prefix = f"bench.{uuid.uuid4().hex[:8]}.{system}"
        return cls(f"{prefix}.requests", f"{prefix}.results", f"{prefix}.errors", f"{prefix}.dead-letter", partitions)

    def request_queues(self) -> list[str]:
        """The request queue and its partitions: every queue a worker consumes requests from."""
        return [self.request, *(partition_queue(self.request, p) for p in range(self.partitions))]

    def all(self) -> list[str]:
        """Every queue declared for these (partitions and urgent twins too)."""
        return [self.result, self.error, self.dead_letter, *request_queues(self.request, self.partitions)]

    def settings(self) -> dict[str, str]:
        """As SNAPWORKER_* settings (without the prefix)."""
        return {
            "request_queue": self.request,
            "result_queue": self.result,
            "error_queue": self.error,
            "dead_letter_queue": self.dead_letter,
        }


class Broker:
    """One connection of the benchmark itself, with a confirming channel for publishing."""

    def __init__(self, url: str, conn: AbstractRobustConnection | Any, channel: AbstractChannel) -> None:
        self.url = url
        self._conn = conn
        self._channel = channel
        self.undeleted: list[Queues] = []  # declared and not yet deleted (a reopened broker deletes them)

    @classmethod
    async def open(cls, url: str) -> Broker:
        conn = await aio_pika.connect(url, client_properties={"connection_name": "snapworker-bench"})
        channel = await conn.channel(publisher_confirms=True)
        return cls(url, conn, channel)

    async def close(self) -> None:
        await self._conn.close()

    @property
    def is_closed(self) -> bool:
        return bool(self._conn.is_closed) or bool(self._channel.is_closed)

    @classmethod
    async def reopen(cls, old: Broker, timeout_s: float = 120.0) -> Broker:
        """A new connection after the broker went away (e.g. a restart by someone's test), waiting for it."""
        with contextlib.suppress(Exception):
            await old.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                new = await cls.open(old.url)
            except (OSError, aio_pika.exceptions.AMQPError) as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not come back within {timeout_s:.0f} s") from exc
                await asyncio.sleep(2.0)
                continue
            for queues in list(old.undeleted):
                with contextlib.suppress(Exception):
                    await new.delete(queues)
            return new

    def server_version(self) -> str | None:
        props = getattr(getattr(self._conn, "transport", None), "connection", None)
        server = getattr(props, "server_properties", None) or {}
        version = server.get("version")
        return version.decode() if isinstance(version, bytes) else (str(version) if version else None)

    async def declare(self, queues: Queues) -> None:
        settings = Settings(amqp_url=self.url, partitions=queues.partitions, **queues.settings())  # type: ignore[arg-type]
        self.undeleted.append(queues)
        await declare_topology(self._channel, settings)

    async def delete(self, queues: Queues) -> None:
        channel = await self._conn.channel()
        try:
            for name in queues.all():
                await channel.queue_delete(name)
        finally:
            await channel.close()
        if queues in self.undeleted:
            self.undeleted.remove(queues)

    async def delete_named(self, names: list[str]) -> None:
        """Delete these queues (those that exist)."""
        channel = await self._conn.channel()
        try:
            for name in names:
                await channel.queue_delete(name)
        finally:
            await channel.close()

    async def publish_many(self, queue: str, messages: Iterable[Message], *, in_flight: int, timeout_s: float) -> int:
        """Publish persistent JSON messages with up to ``in_flight`` confirms outstanding; the count published."""
        exchange = self._channel.default_exchange
        window = asyncio.Semaphore(in_flight)
        pending: set[asyncio.Task[Any]] = set()
        failures: list[BaseException] = []
        deadline = time.monotonic() + timeout_s
        sent = 0

        def finished(task: asyncio.Task[Any]) -> None:
            pending.discard(task)
            window.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        try:
            for body, correlation_id in messages:
                remaining = deadline - time.monotonic()
                if failures:
                    raise failures[0]
                if remaining <= 0:
                    raise TimeoutError(f"publishing took over {timeout_s:.0f} s ({sent} published)")
                await asyncio.wait_for(window.acquire(), timeout=remaining)
                message = aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    correlation_id=correlation_id,
                    message_id=correlation_id,
                )
                task = asyncio.create_task(exchange.publish(message, routing_key=queue))
                pending.add(task)
                task.add_done_callback(finished)
                sent += 1
            if pending:
                _, late = await asyncio.wait(set(pending), timeout=max(1.0, deadline - time.monotonic()))
                if late:
                    raise TimeoutError(f"{len(late)} publishes unconfirmed at the deadline")
            if failures:
                raise failures[0]
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return sent

    async def publish_one(self, queue: str, message: Message) -> None:
        body, correlation_id = message
        await self._channel.default_exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                correlation_id=correlation_id,
                message_id=correlation_id,
            ),
            routing_key=queue,
        )

    async def counts(self, names: list[str]) -> list[tuple[int, int]]:
        """(ready messages, consumers) of each queue, by passive declare."""
        out = []
        for name in names:
            q = await self._channel.declare_queue(name, passive=True)
            result = q.declaration_result
            out.append((int(result.message_count or 0), int(result.consumer_count or 0)))
        return out

    async def collect(self, names: list[str], *, timeout_s: float = 60.0) -> list[tuple[str | None, str | None]]:
        """Consume every message now in ``names`` (auto-ack; call it once nothing publishes to them any more):
        the correlation_id and the ``x-snapworker-status`` header of each."""
        got: list[tuple[str | None, str | None]] = []
        channel = await self._conn.channel()
        try:
            await channel.set_qos(prefetch_count=1000)
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                count = int(queue.declaration_result.message_count or 0)
                if count == 0:
                    continue
                seen: list[tuple[str | None, str | None]] = []
                done = asyncio.Event()

                async def callback(
                    message: AbstractIncomingMessage, seen: list[Any] = seen, n: int = count, done: Any = done
                ) -> None:
                    status = (message.headers or {}).get("x-snapworker-status")
                    seen.append((message.correlation_id, str(status) if status is not None else None))
                    if len(seen) >= n:
                        done.set()

                tag = await queue.consume(callback, no_ack=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), timeout=timeout_s)
                await queue.cancel(tag)
                got += seen
        finally:
            await channel.close()
        return got

    async def subscribe(
        self, names: list[str], on_message: Callable[[AbstractIncomingMessage], None]
    ) -> AbstractChannel:
        """Consume ``names`` with auto-ack into ``on_message`` (arrival is what matters); close the channel after."""
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=1000)

        async def callback(message: AbstractIncomingMessage) -> None:
            on_message(message)

        for name in names:
            q = await channel.declare_queue(name, passive=True)
            await q.consume(callback, no_ack=True)
        return channel


def ctl_queue_state(names: list[str]) -> dict[str, tuple[int, int]]:
    """``rabbitmqctl list_queues``: (messages_ready, messages_unacknowledged) of each named queue that exists."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    wanted = set(names)
    state: dict[str, tuple[int, int]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0] in wanted and parts[1].isdigit() and parts[2].isdigit():
            state[parts[0]] = (int(parts[1]), int(parts[2]))
    return state
