"""The operator tools' view of RabbitMQ: inspect and declare queues, read results.

A separate connection from :class:`~snapworker.client.SnapshotClient` (a command is short-lived and does one
job); like the client, it lets only :mod:`snapworker.errors` exceptions out and no aio-pika types.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydantic import ValidationError

from snapworker.amqp.topology import declare_topology
from snapworker.client import BROKER_ERRORS, open_connection
from snapworker.contract.intake import validation_problems
from snapworker.contract.models import COMPLETION_TYPE, SnapshotCompletion, SnapshotResult
from snapworker.errors import BrokerError, ConfigError
from snapworker.settings import Settings

__all__ = ["BrokerTools", "QueueInfo", "RawMessage", "ReceivedResult"]

_Inbox = asyncio.Queue[tuple[str, AbstractIncomingMessage] | BrokerError]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A request message to publish as it is, through the default exchange."""

    body: bytes
    queue: str
    content_type: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class ReceivedResult:
    """One message read by :meth:`BrokerTools.follow`; ``result`` is None (and ``problem`` says why) when the
    body is not a valid SnapshotResult."""

    queue: str
    body: bytes
    result: SnapshotResult | None
    problem: str | None = None
    correlation_id: str | None = None
    redelivered: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    completion: SnapshotCompletion | None = None
    """Set (and ``result`` None) for a message of type ``snapworker.completion``."""


class BrokerTools:
    """``async with BrokerTools(settings) as broker:`` connects (BrokerError if it cannot) and closes."""

    def __init__(self, settings: Settings, *, connection_name: str = "snapworker-tools") -> None:
        self._settings = settings
        self._name = connection_name
        self._conn: AbstractConnection | None = None

    async def __aenter__(self) -> BrokerTools:
        self._conn = await open_connection(self._settings, self._name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @property
    def _connection(self) -> AbstractConnection:
        if self._conn is None:
            raise BrokerError("not connected: use `async with BrokerTools(settings)`")
        return self._conn

    async def queue_info(self, name: str) -> QueueInfo | None:
        """Messages and consumers of queue ``name``, or None when it does not exist."""
        try:
            # A passive declare of a missing queue closes its channel: use one of its own.
            async with self._connection.channel(publisher_confirms=False) as channel:
                declared = await channel.declare_queue(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot inspect queue {name!r}: {exc!r}") from exc
        except RuntimeError as exc:  # aiormq's "<Connection ...> closed": the connection was lost under us
            raise BrokerError(f"cannot inspect queue {name!r}: {exc!r}") from exc
        result = declared.declaration_result
        return QueueInfo(name, int(result.message_count or 0), int(result.consumer_count or 0))

    async def completion_queue_problems(self) -> list[str]:
        """What an operator should know of the completion queue (see
        :func:`~snapworker.tracking.topology.completion_queue_problems`); creates nothing."""
        from snapworker.tracking.topology import completion_queue_problems

        try:
            async with self._connection.channel(publisher_confirms=False) as channel:
                return await completion_queue_problems(self._settings, channel)
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot inspect the completion queue: {exc!r}") from exc

    async def declare_topology(self) -> None:
        """Declare every queue of the settings, as the worker does; ConfigError if one exists differently."""
        try:
            async with self._connection.channel(publisher_confirms=False) as channel:
                await declare_topology(channel, self._settings)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"a queue exists with other arguments than these settings ask for (QUEUE_TYPE, dead-lettering "
                f"to {self._settings.dead_letter_queue!r}): {exc}; delete it or change the settings"
            ) from exc
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot declare the queues: {exc!r}") from exc

    async def subscribe(self, queue: str, on_body: Callable[[bytes, Mapping[str, Any]], None]) -> None:
        """Read every message of ``queue`` (declared durable if missing; auto-ack) into ``on_body(body,
        headers)`` until the tools close: the demo's way of watching results."""
        try:
            channel = await self._connection.channel(publisher_confirms=False)
            source = await channel.declare_queue(queue, durable=True)

            async def callback(message: AbstractIncomingMessage) -> None:
                on_body(message.body, dict(message.headers or {}))

            await source.consume(callback, no_ack=True)
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot read queue {queue!r}: {exc!r}") from exc

    async def publish_raw(self, messages: Sequence[RawMessage]) -> None:
        """Publish request messages as given (persistent, mandatory) and wait for every confirm; BrokerError
        names the first refused. Bad bodies are the point of some callers (the demo sends invalid ones)."""
        try:
            async with self._connection.channel(publisher_confirms=True) as channel:
                await asyncio.gather(
                    *(
                        channel.default_exchange.publish(
                            aio_pika.Message(
                                m.body,
                                content_type=m.content_type,
                                correlation_id=m.correlation_id,
                                message_id=m.message_id,
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            ),
                            routing_key=m.queue,
                            mandatory=True,
                        )
                        for m in messages
                    )
                )
        except BROKER_ERRORS as exc:
            raise BrokerError(f"publishing failed: {exc!r}") from exc

    async def delete_queues(self, names: Sequence[str]) -> None:
        """Delete queues (the demo cleans up after itself)."""
        try:
            async with self._connection.channel(publisher_confirms=False) as channel:
                for name in names:
                    await channel.queue_delete(name)
        except BROKER_ERRORS as exc:
            raise BrokerError(f"cannot delete queues: {exc!r}") from exc

    async def follow(
        self,
        queues: Sequence[str],
        handle: Callable[[ReceivedResult], None],
        *,
        count: int | None = None,
        max_seconds: float | None = None,
    ) -> int:
        """Consume (remove) messages of ``queues``, calling ``handle`` for each; return how many were handled.

        Each message is acked only after ``handle`` returned: one is lost only if handling it was, and one
        whose ack was lost (the process was killed) comes again. Stops after ``count`` messages or
        ``max_seconds``, whichever comes first (neither: until cancelled). Prefetch is at most ``count`` per
        queue, and what was prefetched but not handled goes back to its queue, in place, when the channel
        closes. Raises BrokerError when a queue does not exist or the connection fails, and what ``handle``
        raised (that message is not acked).
        """
        inbox: _Inbox = asyncio.Queue()
        handled = 0
        failed: Exception | None = None  # raised by handle: re-raised as it is, not as a broker error

        def on_close(_sender: object, exc: BaseException | None = None) -> None:
            inbox.put_nowait(BrokerError(f"the channel closed while reading results: {exc!r}"))

        deadline = asyncio.timeout(max_seconds)
        try:
            async with deadline, self._connection.channel(publisher_confirms=False) as channel:
                channel.close_callbacks.add(on_close)
                await channel.set_qos(prefetch_count=min(count or 100, 100))
                for name in queues:
                    queue = await channel.get_queue(name, ensure=True)  # passive: never creates a queue
                    await queue.consume(functools.partial(_deliver, inbox, name))
                while count is None or handled < count:
                    item = await inbox.get()
                    if isinstance(item, BrokerError):
                        raise item
                    name, message = item
                    try:
                        handle(_received(name, message))
                    except Exception as exc:  # not acked: the message goes back to its queue
                        failed = exc
                        break
                    await message.ack()
                    handled += 1
        except TimeoutError as exc:
            if deadline.expired():
                return handled
            raise BrokerError(f"the broker did not answer in time: {exc!r}") from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise BrokerError(f"a queue to follow does not exist: {exc}") from exc
        except BROKER_ERRORS as exc:
            raise BrokerError(f"reading results failed: {exc!r}") from exc
        if failed is not None:
            raise failed
        return handled


async def _deliver(inbox: _Inbox, queue: str, message: AbstractIncomingMessage) -> None:
    inbox.put_nowait((queue, message))


def _received(queue: str, message: AbstractIncomingMessage) -> ReceivedResult:
    headers = {k: v.decode(errors="replace") if isinstance(v, bytes) else str(v) for k, v in message.headers.items()}
    completion: SnapshotCompletion | None = None
    result: SnapshotResult | None = None
    try:
        if message.type == COMPLETION_TYPE:
            completion, problem = SnapshotCompletion.model_validate_json(message.body), None
        else:
            result, problem = SnapshotResult.model_validate_json(message.body), None
    except ValidationError as exc:
        problem = "; ".join(validation_problems(exc))
    return ReceivedResult(
        queue, message.body, result, problem, message.correlation_id, bool(message.redelivered), headers, completion
    )
