"""SnapshotClient: how other asyncio services ask snapworker for snapshots over RabbitMQ.

::

    async with SnapshotClient(settings) as client:            # or SnapshotClient("amqp://user:pw@host/")
        result = await client.create_snapshots("proj", ["desk-1", "desk-2"], timeout=60)
        correlation_id = await client.publish(SnapshotRequest(project_id="proj", desktop_ids=("desk-3",)))

The contract:

* Requests are validated with :class:`~snapworker.contract.models.SnapshotRequest` (and their size with
  MAX_MESSAGE_BYTES) before anything is sent: invalid input raises :class:`~snapworker.errors.InvalidMessage`
  and publishes nothing. Results are validated with :class:`~snapworker.contract.models.SnapshotResult`.
* :meth:`SnapshotClient.publish` sends one persistent, mandatory message and returns once the broker has
  confirmed it: the request is then queued. No request queue raises BrokerError (nothing was queued).
* A request's ``priority`` ("urgent" or "normal", see :mod:`snapworker.contract.priority`) is sent twice: in the
  body, which wins where urgency is decided, and as the AMQP ``priority`` property (9 or 0), which a
  priority-aware queue orders by. A request without one sets no priority (aio-pika's default 0, as before).
  Urgent requests go to the urgent queue ``<REQUEST_QUEUE>.urgent`` (:meth:`SnapshotClient._routing_key`).
* :meth:`SnapshotClient.create_snapshots` sends with ``reply_to`` set to this client's private reply queue
  (exclusive, auto-delete, named by the broker, declared on first use, one consumer) and waits for the result
  with its ``correlation_id``. :class:`~snapworker.errors.ResultTimeout` when it does not come in time: the
  request may still be done; its late result is dropped (after :meth:`close`, the worker sends it to the error
  queue, as for any vanished reply queue).
* :meth:`SnapshotClient.wait_for_completion` then waits, on the same reply queue, for the request's
  :class:`~snapworker.contract.models.SnapshotCompletion` (AMQP type ``snapworker.completion``): how each
  desktop's snapshot ended. A completion that arrives before anyone waits for it is kept (the latest 1,000)
  until asked for.
* A lost connection fails the calls waiting for results with BrokerError; the next call connects anew. Nothing
  is re-published automatically: a lost confirm does not mean the broker lacks the message, and sending it
  again could snapshot twice.
* Only :mod:`snapworker.errors` exceptions leave this module; aio-pika's become BrokerError. One client may
  be shared by many tasks: their confirms are pipelined on one channel.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Iterable
from types import TracebackType

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pydantic import SecretStr, ValidationError

from snapworker.amqp.errors import CONNECTION_ERRORS, connect_error
from snapworker.amqp.partitioning import urgent_queue
from snapworker.contract.intake import validation_problems
from snapworker.contract.models import (
    COMPLETION_TYPE,
    DiskSnapshotInfo,
    DiskType,
    SnapshotCompletion,
    SnapshotRequest,
    SnapshotResult,
)
from snapworker.contract.priority import Priority, amqp_priority
from snapworker.errors import BrokerError, InvalidMessage, ResultTimeout
from snapworker.settings import Settings

__all__ = ["SnapshotClient"]

log = logging.getLogger("snapworker.client")

#: What aio-pika and aiormq raise when the broker or the connection fails; translated to BrokerError.
BROKER_ERRORS = CONNECTION_ERRORS
_SHORTSTR = 255  # AMQP property strings (correlation_id, reply_to, message_id) are at most 255 bytes
_EARLY_COMPLETIONS = 1000  # completions kept for a later wait_for_completion


class SnapshotClient:
    """A publisher's connection to snapworker. ``target`` is Settings (queue names, limits, timeouts) or just
    a broker URL (then the default queue names). ``result_timeout_s`` defaults to the worker's worst case for
    one batch (LINGER_MS + RETRY_MAX_TIME_S + READ_TIMEOUT_S) plus a minute."""

    def __init__(
        self,
        target: Settings | str,
        *,
        result_timeout_s: float | None = None,
        connection_name: str = "snapworker-client",
    ) -> None:
        # A bare URL means the default queue names and limits; model_construct does not read the environment.
        s = target if isinstance(target, Settings) else Settings.model_construct(amqp_url=SecretStr(target))
        self._settings = s
        self.request_queue: str = s.request_queue
        worst_case = s.linger_s + s.retry_max_time_s + s.read_timeout_s + 60.0
        self.result_timeout_s: float = result_timeout_s if result_timeout_s is not None else worst_case
        self._name = connection_name
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._reply_queue: str | None = None
        self._pending: dict[str, asyncio.Future[SnapshotResult]] = {}
        self._completions: dict[str, asyncio.Future[SnapshotCompletion]] = {}
        self._early: dict[str, SnapshotCompletion] = {}
        # the worker's tracking deadline, its longest poll and a minute: by then every completion was sent
        self.completion_timeout_s: float = s.track_deadline_s + s.track_max_poll_s + 60.0
        self._lock = asyncio.Lock()

    # -- lifecycle
    async def __aenter__(self) -> SnapshotClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect now (calls connect on demand anyway): raises BrokerError when the broker cannot be used."""
        await self._ready()

    async def close(self) -> None:
        """Close the connection; calls still waiting for a result fail with BrokerError. Safe to call twice."""
        self._fail_pending(BrokerError("the client was closed before the result arrived"))
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        conn, self._conn, self._channel, self._reply_queue = self._conn, None, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as exc:  # closing a dead connection must not raise over the caller's own error
                log.debug("closing the broker connection failed: %r", exc)

    async def _ready(self) -> AbstractChannel:
        async with self._lock:
            return await self._ready_locked()

    async def _ready_locked(self) -> AbstractChannel:
        """The open publishing channel, connecting first if needed; call with ``_lock`` held."""
        if self._channel is None or self._channel.is_closed:
            # What waited on a lost connection has failed already (_on_lost); new waiters must not.
            await self._drop_connection()
            await self._open()
        assert self._channel is not None
        return self._channel

    async def _open(self) -> None:
        conn = await open_connection(self._settings, self._name)
        try:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        except BROKER_ERRORS as exc:
            await conn.close()
            raise BrokerError(f"cannot open a channel: {exc!r}") from exc
        lost = functools.partial(self._on_lost, conn)
        conn.close_callbacks.add(lost)
        channel.close_callbacks.add(lost)
        self._conn, self._channel = conn, channel

    def _on_lost(self, conn: AbstractConnection, _sender: object, exc: BaseException | None = None) -> None:
        if conn is not self._conn:  # an old connection we replaced or closed ourselves
            return
        self._channel, self._reply_queue = None, None
        self._fail_pending(BrokerError(f"lost the broker connection while waiting for results: {exc!r}"))

    def _fail_pending(self, error: BrokerError) -> None:
        futures: list[asyncio.Future[SnapshotResult] | asyncio.Future[SnapshotCompletion]] = [
            *self._pending.values(),
            *self._completions.values(),
        ]
        for future in futures:
            if not future.done():
                future.set_exception(error)

    # -- publishing
    async def publish(
        self, request: SnapshotRequest, *, reply_to: str | None = None, correlation_id: str | None = None
    ) -> str:
        """Queue ``request`` and wait for the broker's confirm; return its correlation id (a new UUID unless
        given). The AMQP message_id, which the worker uses as request_id unless the request has one, is the
        request's ``request_id`` or else that correlation id. The result goes to ``reply_to`` if set, else to
        the result queue (accepted) or the error queue (anything else). The request's ``priority``, if any,
        is also sent as the AMQP priority property."""
        body = self._encode(request)
        correlation_id = correlation_id or uuid.uuid4().hex
        _check_shortstr(correlation_id=correlation_id, reply_to=reply_to)
        await self._send(body, request, correlation_id, reply_to)
        return correlation_id

    async def create_snapshots(
        self,
        project_id: str,
        desktop_ids: Iterable[str],
        *,
        disk_type: DiskType | None = None,
        system_disk_snapshot: DiskSnapshotInfo | None = None,
        data_disk_snapshot: DiskSnapshotInfo | None = None,
        request_id: str | None = None,
        priority: Priority | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- it bounds the wait for the result: ResultTimeout
    ) -> SnapshotResult:
        """Ask for snapshots and wait for the result (any status: accepted, partial, failed or invalid).

        ``priority="urgent"`` marks an on-demand request, to be served before bulk ones (body field and AMQP
        priority property, as :meth:`publish` sends them); None (the default) leaves the priority unsaid.
        ``timeout`` (seconds, default :attr:`result_timeout_s`) bounds publishing and waiting together.
        Raises InvalidMessage before publishing anything for invalid input, ResultTimeout when no result came
        in time, BrokerError when the broker refused the request or the connection was lost.
        """
        try:
            request = SnapshotRequest(
                project_id=project_id,
                desktop_ids=tuple(desktop_ids),
                disk_type=disk_type,
                system_disk_snapshot=system_disk_snapshot,
                data_disk_snapshot=data_disk_snapshot,
                request_id=request_id,
                priority=priority,
            )
        except ValidationError as exc:
            raise InvalidMessage(validation_problems(exc), project_id=project_id) from exc
        body = self._encode(request)
        correlation_id = uuid.uuid4().hex
        limit = self.result_timeout_s if timeout is None else timeout
        # Registered before publishing: the result can arrive before the confirm does.
        future: asyncio.Future[SnapshotResult] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                reply_to = await self._reply_to()
                await self._send(body, request, correlation_id, reply_to)
                return await future
        except TimeoutError as exc:
            if not deadline.expired():
                raise BrokerError(f"the broker did not answer in time: {exc!r}") from exc
            raise ResultTimeout(correlation_id, limit) from exc
        finally:
            del self._pending[correlation_id]

    async def wait_for_completion(
        self,
        result: SnapshotResult | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 -- it bounds the wait for the completion: ResultTimeout
    ) -> SnapshotCompletion:
        """Wait for the completion of a request answered by :meth:`create_snapshots` (its ``result``, or the
        ``correlation_id`` it carried): one per request whose result listed jobs, once every job ended.

        ``timeout`` defaults to :attr:`completion_timeout_s` (the worker's TRACK_DEADLINE_S, after which it
        reports ``unknown``, plus margins). Raises ValueError for a result without jobs (no completion comes),
        ResultTimeout when none came in time, BrokerError when the connection was lost meanwhile (the
        completion then goes to the completion queue, the reply queue being gone).
        """
        if isinstance(result, SnapshotResult):
            if not result.jobs or result.correlation_id is None:
                raise ValueError("no completion follows a result without jobs or without a correlation_id")
            correlation_id = result.correlation_id
        else:
            correlation_id = result
        early = self._early.pop(correlation_id, None)
        if early is not None:
            return early
        await self._reply_to()  # after a reconnect: listen again (a completion sent meanwhile was detoured)
        limit = self.completion_timeout_s if timeout is None else timeout
        future: asyncio.Future[SnapshotCompletion] = asyncio.get_running_loop().create_future()
        self._completions[correlation_id] = future
        try:
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError as exc:
            raise ResultTimeout(correlation_id, limit) from exc
        finally:
            del self._completions[correlation_id]

    def _encode(self, request: SnapshotRequest) -> bytes:
        # Dumped and validated again: a model_construct()ed or mutated request must not slip through.
        body = request.model_dump_json(exclude_none=True).encode()
        try:
            SnapshotRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidMessage(validation_problems(exc), project_id=request.project_id) from exc
        limit = self._settings.max_message_bytes
        if len(body) > limit:
            raise InvalidMessage([f"body is {len(body)} bytes, over MAX_MESSAGE_BYTES ({limit})"])
        return body

    def _routing_key(self, request: SnapshotRequest) -> str:
        """The queue ``request`` is published to (default exchange): the urgent queue ``<REQUEST_QUEUE>.urgent``
        for an urgent request, which workers read beside their backlog (see docs/urgent.md); else the request
        queue."""
        return urgent_queue(self.request_queue) if request.priority == "urgent" else self.request_queue

    async def _send(self, body: bytes, request: SnapshotRequest, correlation_id: str, reply_to: str | None) -> None:
        channel = await self._ready()
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=request.request_id or correlation_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            priority=amqp_priority(request.priority),
        )
        queue = self._routing_key(request)
        try:
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
        except aiormq.exceptions.PublishError as exc:
            raise BrokerError(f"no queue {queue!r} took the request (nothing was queued); is it declared?") from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise BrokerError(f"the broker refused the request for {queue!r} (nack): {exc!r}") from exc
        except BROKER_ERRORS as exc:
            raise BrokerError(f"publishing to {queue!r} failed; the request may or may not be queued: {exc!r}") from exc

    # -- results
    async def _reply_to(self) -> str:
        """This client's reply queue, declared and consumed on first use (and after a reconnect)."""
        async with self._lock:
            channel = await self._ready_locked()
            if self._reply_queue is None:
                try:
                    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
                    await queue.consume(self._on_reply, no_ack=True)
                except BROKER_ERRORS as exc:
                    raise BrokerError(f"cannot declare a reply queue: {exc!r}") from exc
                self._reply_queue = queue.name
            return self._reply_queue

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        if message.type == COMPLETION_TYPE:
            self._on_completion(message)
            return
        future = self._pending.get(message.correlation_id or "")
        if future is None or future.done():
            log.info("dropping a result nobody waits for (timed out?): correlation_id=%s", message.correlation_id)
            return
        try:
            future.set_result(SnapshotResult.model_validate_json(message.body))
        except ValidationError as exc:
            future.set_exception(
                InvalidMessage(["the result is not a valid SnapshotResult", *validation_problems(exc)])
            )

    def _on_completion(self, message: AbstractIncomingMessage) -> None:
        try:
            completion = SnapshotCompletion.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning("dropping a completion that is not valid: %s", "; ".join(validation_problems(exc)))
            return
        future = self._completions.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(completion)
            return
        self._early[message.correlation_id or completion.request_id] = completion
        while len(self._early) > _EARLY_COMPLETIONS:
            del self._early[next(iter(self._early))]  # the oldest


async def open_connection(settings: Settings, name: str) -> AbstractConnection:
    """A plain (not robust: see amqp.py) broker connection; BrokerError when RabbitMQ cannot be reached.

    Package-internal (the tools use it too): aio-pika types stay out of the public API.
    """
    url = settings.amqp_url.get_secret_value()
    try:
        return await aio_pika.connect(
            url,
            timeout=settings.connect_timeout_s,
            heartbeat=settings.heartbeat_s,
            client_properties={"connection_name": name},
        )
    except BROKER_ERRORS as exc:
        raise connect_error(exc, url) from exc  # BrokerRefused for a wrong password or vhost


def _check_shortstr(**values: str | None) -> None:
    for name, value in values.items():
        if value is not None and not 0 < len(value.encode()) <= _SHORTSTR:
            raise InvalidMessage([f"{name} must be 1 to {_SHORTSTR} bytes"])
