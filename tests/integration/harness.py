"""A test's view of the broker: publish requests like a client would, collect every result, count duplicates.

Also the worker as a child process (:class:`WorkerProcess`), for the tests that signal or kill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pydantic import SecretStr

from snapworker.amqp.partitioning import request_queues
from snapworker.amqp.topology import declare_topology
from snapworker.contract.models import COMPLETION_TYPE, SnapshotCompletion, SnapshotResult
from snapworker.settings import Settings
from snapworker.tracking.loop import declare_tracking_topology, tracking_queues


class Received:
    """One message read from a result, error, reply or dead-letter queue."""

    def __init__(self, queue: str, message: AbstractIncomingMessage) -> None:
        self.queue = queue
        self.body = message.body
        self.headers = dict(message.headers or {})
        self.correlation_id = message.correlation_id
        self.persistent = message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        self.type = message.type
        self.message_id = message.message_id

    @functools.cached_property
    def result(self) -> SnapshotResult:
        return SnapshotResult.model_validate_json(self.body)

    @functools.cached_property
    def completion(self) -> SnapshotCompletion:
        return SnapshotCompletion.model_validate_json(self.body)


class BrokerProbe:
    """Publishes raw test messages and collects what arrives on the queues a test watches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.received: list[Received] = []
        self._arrived = asyncio.Condition()
        self._declared: set[str] = set()
        self._watched: list[str] = []
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> BrokerProbe:
        await self._connect()
        await declare_topology(self.channel, self.settings)
        s = self.settings
        self._declared |= {s.result_queue, s.error_queue, s.dead_letter_queue}
        self._declared |= set(request_queues(s.request_queue, s.partitions))  # partitions and urgent twins too
        for queue in (s.result_queue, s.error_queue, s.dead_letter_queue):
            await self.watch(queue, declare=False)
        if s.track_jobs:  # the tracking loop's queues: declared like a worker would, deleted at the end
            await declare_tracking_topology(self.channel, s)
            self._declared |= set(tracking_queues(s))
            await self.watch(s.completion_queue, declare=False)
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        assert self._conn is not None
        if self._conn.is_closed:  # lost in a broker restart: clean up over a new connection
            await self._connect()
        assert self._conn is not None
        cleanup = await self._conn.channel()
        for name in self._declared:
            await cleanup.queue_delete(name)
        await self._conn.close()

    async def _connect(self) -> None:
        self._conn = await aio_pika.connect(self.settings.amqp_url.get_secret_value())
        self._channel = await self._conn.channel(publisher_confirms=True)

    async def reconnect(self, *, timeout: float = 30.0) -> None:
        """Open a new connection (the old one died, e.g. in a broker restart) and watch the same queues again.

        Nothing is lost: results are persistent and the watchers ack only what they recorded, so what the old
        connection had not acked comes again (and counts as a duplicate if it had been recorded).
        """
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._connect()
                break
            except (aiormq.exceptions.AMQPError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        watched, self._watched = self._watched, []
        for queue in watched:
            await self.watch(queue, declare=False)

    def forget_at_exit(self, queue: str) -> None:
        """Delete ``queue`` with the test's other queues at the end."""
        self._declared.add(queue)

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
        self._watched.append(queue)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with self._arrived:
                self.received.append(Received(queue, message))
                self._arrived.notify_all()
            # Acked only once recorded: a message in flight when the connection dies is redelivered, not lost.
            with contextlib.suppress(Exception):
                await message.ack()

        await source.consume(on_message)

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
        """Results from every queue but the dead-letter queue (completions are not results)."""
        return [
            r.result for r in self.received if r.queue != self.settings.dead_letter_queue and r.type != COMPLETION_TYPE
        ]

    def completions(self) -> list[SnapshotCompletion]:
        """Completions, wherever they arrived."""
        return [r.completion for r in self.received if r.type == COMPLETION_TYPE]

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

    async def wait_for_requests(
        self,
        request_ids: Collection[str],
        *,
        timeout: float = 30.0,
    ) -> Counter[str]:
        """Wait until each of ``request_ids`` has at least one result (duplicates allowed); results per id."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        async with self._arrived:
            while missing := wanted - self.request_ids().keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"waited {timeout} s for results of {len(wanted)} requests; {len(missing)} have none, "
                        f"e.g. {sorted(missing)[:5]}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=remaining)
        return self.request_ids()

    async def queue_depth(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def requests_waiting(self) -> int:
        """Requests waiting in any queue requests wait in: the request queue, the partitions and their urgent twins
        (a missing one counts 0). A worker's router moves requests from the first to the others at once."""
        assert self._conn is not None
        channel = await self._conn.channel()  # a passive declare of a missing queue closes its channel
        waiting = 0
        try:
            for queue in request_queues(self.settings.request_queue, self.settings.partitions):
                try:
                    declared = await channel.declare_queue(queue, passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    channel = await self._conn.channel()
                    continue
                waiting += int(declared.declaration_result.message_count or 0)
        finally:
            if not channel.is_closed:
                await channel.close()
        return waiting

    async def consumers(self, queue: str) -> int | None:
        """Consumers the broker counts on ``queue``; None when the queue does not exist."""
        assert self._conn is not None
        # A passive declare of a missing queue closes its channel: never use the publishing one for it.
        channel = await self._conn.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        finally:
            if not channel.is_closed:
                await channel.close()
        return int(declared.declaration_result.consumer_count or 0)

    async def wait_until(
        self,
        what: str,
        check: Callable[[], Awaitable[bool]],
        *,
        timeout: float = 30.0,
        every: float = 0.05,
    ) -> None:
        """Poll the (async) ``check()`` until it returns true; fail after ``timeout`` naming ``what``."""
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout} s for {what}")
            await asyncio.sleep(every)

    def request_ids(self) -> Counter[str]:
        """How many results arrived per request_id (dead-letter queue excluded)."""
        return Counter(r.request_id for r in self.results())

    def duplicates(self) -> int:
        counts = Counter(r.request_id for r in self.results())
        return sum(n - 1 for n in counts.values())


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a ``snapworker run`` child configured exactly like ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SNAPWORKER_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"SNAPWORKER_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``python -m snapworker run`` as a child process configured from ``settings``; its log goes to ``log_path``.

    The child usually calls the test's simulator, which runs in the test's event loop: wait for the child
    with the async methods here, never with blocking calls. Leaving the ``async with`` kills it if it still runs.
    """

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "snapworker",
                "run",
                env=worker_env(self.settings),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        return self

    async def __aexit__(
        self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    ) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    @property
    def returncode(self) -> int | None:
        assert self._proc is not None
        return self._proc.returncode

    def send_signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    async def wait(self, *, timeout: float) -> int:
        """The exit code; fail if the child has not exited within ``timeout``."""
        assert self._proc is not None
        try:
            return await asyncio.wait_for(self._proc.wait(), timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"the worker did not exit within {timeout} s; its log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
