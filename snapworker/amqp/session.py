"""The worker's RabbitMQ edge: topology, one consuming and one publishing connection, deliveries, settling.

The worker meets aio-pika and aiormq here and nowhere else; their errors become BrokerError. (Publishers have
their own edge in client.py.)

Why not aio-pika's robust channel restoration: a restored consumer can silently fail to come back (aio-pika
#334, #588, #669), and deliveries of the dead channel must never be acked on the new one. So one
:class:`AmqpSession` lives exactly as long as its connections: when anything breaks, the session reports it
through :attr:`AmqpSession.lost`, the worker forgets what it held (the broker redelivers it) and opens a new
session. Every delivery knows its session and refuses to settle on another.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from snapworker.amqp.errors import CHANNEL_ERRORS, connect_error
from snapworker.amqp.inline import InlineCallback, consume_inline
from snapworker.amqp.partitioning import ROUTER_MADE_ID, urgent_queue
from snapworker.amqp.publish import Outgoing, publish_confirmed
from snapworker.amqp.settler import Settler
from snapworker.amqp.topology import declare_topology
from snapworker.contract.intake import Envelope
from snapworker.errors import BrokerError, ConfigError, UnroutableResult
from snapworker.settings import Settings

__all__ = ["REASON_HEADER", "REASON_MAX_CHARS", "AmqpSession", "Delivery", "Message", "Settle"]

log = logging.getLogger("snapworker.amqp")

Settle = Literal["ack", "dead-letter", "requeue"]

#: Header of a dead-lettered request copy: why the worker dead-lettered it (at most REASON_MAX_CHARS).
REASON_HEADER = "x-snapworker-reason"
REASON_MAX_CHARS = 1000


def connection_name(role: str) -> str:
    """How a worker's connection shows in RabbitMQ (``rabbitmqctl list_connections user_provided_name``, the
    management UI): its role, process and host, so an operator can tell which worker holds what."""
    return f"snapworker-{role} pid {os.getpid()} on {socket.gethostname()}"


# a publish fails with these when the channel, or the connection under it, breaks
_PUBLISH_ERRORS: tuple[type[BaseException], ...] = (*CHANNEL_ERRORS, ConnectionError)


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish to ``queue`` (through the default exchange), persistent and mandatory."""

    body: bytes
    queue: str
    correlation_id: str | None = None
    headers: Mapping[str, str] | None = None
    content_type: str = "application/json"
    message_id: str | None = None


@dataclass(eq=False, slots=True)
class Delivery:
    """One request message held by the worker, until it is settled exactly once."""

    envelope: Envelope
    reply_to: str | None
    tag: int
    session: AmqpSession = field(repr=False)
    #: the settler of the channel it came on: the consume channel's (None: the session's), or the router's
    settler: Settler | None = field(default=None, repr=False)
    settled: bool = False


class AmqpSession:
    """A pair of broker connections, the declared topology and (after :meth:`consume`) one consumer."""

    def __init__(
        self,
        settings: Settings,
        consume_conn: AbstractConnection,
        publish_conn: AbstractConnection,
        consume_channel: AbstractChannel,
        publish_channel: AbstractChannel,
    ):
        self._settings = settings
        self._consume_conn = consume_conn
        self._publish_conn = publish_conn
        self._consume_channel = consume_channel
        self._publish_channel = publish_channel
        # queue -> consumer tag on the consume channel: the request queue, or the partitions this worker owns
        self._consumers: dict[str, str] = {}
        # consumer tag -> the prefetch count it was started under (basic.qos binds a consumer when it starts)
        self._prefetch_of: dict[str, int] = {}
        # queue in _consumers -> consumer tag on its urgent twin: URGENT_PREFETCH each, outside the window's share
        self._urgent: dict[str, str] = {}
        self._consumer_lock = asyncio.Lock()
        self._consuming = False
        self._on_message: InlineCallback | None = None
        self._on_urgent: InlineCallback | None = None
        self.prefetch = settings.prefetch
        self._underlay: aiormq.Channel | None = None
        self._publish_underlay: aiormq.Channel | None = None
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.on_settled: Callable[[Delivery], object] | None = None
        # deliveries in delivery-tag order, for multiple acks; settled ones leave from the front
        self._settler = Settler(lambda: self._underlay, self.lost, lambda exc: self._on_close(self, exc))
        # the router's channel's (see router_settler), and how many requests taken from the router are held
        self._other_settlers: list[Settler] = []
        self._held_elsewhere = 0
        self._on_room: Callable[[], None] | None = None
        self._on_delivery: Callable[[Delivery], None] | None = None
        for conn in (consume_conn, publish_conn):
            conn.close_callbacks.add(self._on_close)
        for channel in (consume_channel, publish_channel):
            channel.close_callbacks.add(self._on_close)

    # -- lifecycle
    @classmethod
    async def open(cls, settings: Settings) -> AmqpSession:
        """Connect twice (publisher flow control must not block consumer acks) and declare the topology."""
        url = settings.amqp_url.get_secret_value()
        opened: list[AbstractConnection] = []
        try:
            for name in ("consume", "publish"):
                opened.append(
                    await aio_pika.connect(
                        url,
                        heartbeat=settings.heartbeat_s,
                        client_properties={"connection_name": connection_name(name)},
                    )
                )
            consume_conn, publish_conn = opened
            consume_channel = await consume_conn.channel(publisher_confirms=False)
            await consume_channel.set_qos(prefetch_count=settings.prefetch)
            publish_channel = await publish_conn.channel(publisher_confirms=True, on_return_raises=True)
            await declare_topology(publish_channel, settings)
        except BaseException as exc:
            for conn in opened:
                await conn.close()
            if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
                raise ConfigError(
                    f"queue {settings.request_queue!r} exists with other arguments than QUEUE_TYPE="
                    f"{settings.queue_type} and dead-lettering to {settings.dead_letter_queue!r} ({exc}); "
                    f"delete it or change the settings"
                ) from exc
            if isinstance(exc, (TimeoutError, aiormq.exceptions.AMQPError, OSError)):  # connecting: not a channel yet
                raise connect_error(exc, url) from exc  # BrokerRefused when retrying cannot help
            raise
        return cls(settings, consume_conn, publish_conn, consume_channel, publish_channel)

    async def close(self) -> None:
        for conn in (self._consume_conn, self._publish_conn):
            conn.close_callbacks.discard(self._on_close)
            try:
                await conn.close()
            except Exception as exc:  # closing a dead connection must not hide the reason it died
                log.debug("closing a broker connection failed: %r", exc)

    def _on_close(self, _sender: object, exc: BaseException | None = None) -> None:
        if not self.lost.is_set():
            self.lost_reason = repr(exc) if exc else "closed"
            self.lost.set()

    # -- consuming
    async def consume(self, on_delivery: Callable[[Delivery], None], *, queues: Sequence[str] | None = None) -> None:
        """Start delivering request messages to ``on_delivery`` in delivery order.

        ``queues`` defaults to the request queue; a partitioned worker passes none and :meth:`attach`-es the
        partitions it owns later. Each queue's urgent twin is consumed with it (see :meth:`attach`); a delivery
        from a twin has ``envelope.from_urgent_queue`` set. The hot path speaks aiormq (aio-pika's own
        transport) directly: aio-pika's per-message wrapper and the extra task it spawns per delivery cost more
        than the rest of our work on a message (profiled). ``on_delivery`` is called synchronously, so deliveries
        reach the core in the order the broker sent them.
        """

        def callback_for(from_urgent_queue: bool) -> InlineCallback:
            def callback(message: DeliveredMessage) -> None:
                self._deliver(message, self._settler, from_urgent_queue=from_urgent_queue)

            return callback

        self._on_delivery = on_delivery
        self._on_message, self._on_urgent = callback_for(False), callback_for(True)
        try:
            self._underlay = cast(aiormq.Channel, await self._consume_channel.get_underlay_channel())
        except CHANNEL_ERRORS as exc:
            raise BrokerError(f"cannot open the consume channel: {exc!r}") from exc
        self._consuming = True
        for queue in [self._settings.request_queue] if queues is None else queues:
            await self.attach(queue)

    def _deliver(self, message: DeliveredMessage, settler: Settler, *, from_urgent_queue: bool) -> None:
        """Hold ``message`` (settled through ``settler``, the one of the channel it came on) and hand it on."""
        props = message.header.properties
        delivery = Delivery(
            envelope=Envelope(
                body=message.body,
                content_type=props.content_type,
                # a message_id the partition router made up is no key: the request came without one
                message_id=None if (props.headers or {}).get(ROUTER_MADE_ID) else props.message_id,
                correlation_id=props.correlation_id,
                priority=props.priority,
                from_urgent_queue=from_urgent_queue,
            ),
            reply_to=props.reply_to or None,
            tag=message.delivery_tag or 0,
            session=self,
            settler=settler,
        )
        settler.hold(delivery)
        if settler is not self._settler:
            self._held_elsewhere += 1
        assert self._on_delivery is not None
        self._on_delivery(delivery)

    # -- requests taken straight from the router (see partitions.py: no hop through a partition)
    def router_settler(self, channel: aiormq.Channel, on_room: Callable[[], None]) -> Settler:
        """The settler of the partition router's ``channel``: the router acks what it forwarded through it, and
        requests it hands over with :meth:`take_from_router` are settled through it like any other.
        ``on_room`` is called whenever requests of this session are settled (its window may have room)."""
        settler = Settler(lambda: channel, self.lost, lambda exc: self._on_close(self, exc))
        self._other_settlers.append(settler)
        self._on_room = on_room
        return settler

    def takes_from_router(self, partition_queue: str) -> bool:
        """Whether the router may hand this session a request of ``partition_queue`` instead of forwarding it:
        the session consumes that partition, and holds fewer requests than its window. (Past the window the
        router forwards, so that the backlog waits in the partitions, where an urgent request overtakes it.)"""
        return (
            self._consuming
            and not self.lost.is_set()
            and partition_queue in self._consumers
            and len(self._settler) + self._held_elsewhere < self.prefetch
        )

    @property
    def taken_from_router(self) -> int:
        """How many requests taken from the router this session holds unsettled."""
        return self._held_elsewhere

    def take_from_router(self, message: DeliveredMessage, settler: Settler) -> None:
        """Take a request the router received, as if it had come from its partition; settled on the router's
        channel through ``settler`` (that of :meth:`router_settler`)."""
        self._deliver(message, settler, from_urgent_queue=False)

    async def attach(self, queue: str) -> None:
        """Consume ``queue`` and its urgent twin too (see :meth:`attach_many`)."""
        await self.attach_many([queue])

    async def attach_many(self, queues: Sequence[str]) -> None:
        """Consume ``queues`` and their urgent twins too, each sharing the window equally with the others.

        All at once: the consumers already there are reshared once, to the final share, and the new ones start
        with it (a lone worker claiming 16 partitions one attach at a time swapped consumers 136 times, 3.6 s
        of round trips while requests waited in unclaimed partitions).

        Every queue's consumer gets ``prefetch // queues`` (at least 1): the prefetch counts of this channel's
        consumers of those queues sum to at most the window after each attach, detach and widening (see
        :meth:`_reshare` for the one round trip of each consumer swap). The twin's consumer gets URGENT_PREFETCH,
        on top of the window and never changed: the backlog fills the window, and an urgent request must still
        get through (see docs/urgent.md).
        """
        async with self._consumer_lock:
            underlay, callback, urgent = self._underlay, self._on_message, self._on_urgent
            new = [q for q in dict.fromkeys(queues) if q not in self._consumers]
            if underlay is None or callback is None or urgent is None or not new:
                return
            queue = new[0]
            try:
                # The others give up their part before the new consumers take their own: started first, they
                # would add their share to a window the others already fill.
                share = self._share(len(self._consumers) + len(new))
                await self._reshare(underlay, callback, share)
                await underlay.basic_qos(prefetch_count=share)
                for queue in new:
                    tag = self._consumers[queue] = await consume_inline(underlay, queue, callback)
                    self._prefetch_of[tag] = share
                await underlay.basic_qos(prefetch_count=self._settings.urgent_prefetch)
                for queue in new:
                    self._urgent[queue] = await consume_inline(underlay, urgent_queue(queue), urgent)
            except CHANNEL_ERRORS as exc:
                # a channel closed before or while we asked is a broker failure like any other, not a bug
                raise BrokerError(f"cannot consume from {queue!r}: {exc!r}") from exc

    async def detach(self, queue: str) -> None:
        """Stop consuming ``queue`` and its urgent twin; the queues still consumed share its part of the window.
        What they delivered stays held until settled."""
        async with self._consumer_lock:
            tag = self._consumers.pop(queue, None)
            if tag is None:
                return
            twin = self._urgent.pop(queue, None)
            self._prefetch_of.pop(tag, None)
            underlay, callback = self._underlay, self._on_message
            if underlay is None or callback is None or self.lost.is_set():
                return
            try:
                # The twin first: until ``queue`` has no consumer of ours, no other worker claims it (and its twin).
                if twin is not None:
                    await underlay.basic_cancel(twin)
                await underlay.basic_cancel(tag)
                if self._consuming:  # not while stopping: the others are about to be cancelled too
                    await self._reshare(underlay, callback, self._share(len(self._consumers)))
            except CHANNEL_ERRORS as exc:
                raise BrokerError(f"cannot stop consuming {queue!r}: {exc!r}") from exc

    def _share(self, consumers: int) -> int:
        # The window is the worker's, not each consumer's: more requests held than the API can send before the
        # broker's consumer timeout would expire them (see core/window.py). Rounded down, so that the consumers'
        # counts sum to at most the window; at least 1, since a prefetch count of 0 means no limit at all.
        share = self.prefetch // max(1, consumers)
        if consumers > 1:
            # A partition's share must hold a full batch in flight and the next one filling (late binding): with
            # less, a lone worker owning many partitions sends a hot project's batches part-empty while the
            # previous call of that partition is unanswered. Two batches per partition, within PREFETCH_MAX.
            share = max(share, min(2 * self._settings.max_batch, self._settings.prefetch_max // consumers))
        return max(1, share)

    async def _reshare(self, underlay: aiormq.Channel, callback: InlineCallback, share: int) -> None:
        """Give every consumer whose prefetch count is not ``share`` a successor with it (under the consumer lock).
        The urgent twins' consumers are not among them: their count is URGENT_PREFETCH, whatever the window.

        RabbitMQ applies basic.qos (global=false) only to consumers started after it, and quorum queues refuse the
        channel-wide kind, so a consumer's count changes only by replacing it: the successor starts, then the old
        one is cancelled. In that order because a queue must never be without our consumer (another worker would
        see the partition free and claim it); for that one round trip the queue has both, and the counts sum to
        up to one share more than the window. What the old consumer delivered stays held on this channel and is
        settled as usual (so, until it is, the requests held may exceed the window by what it had delivered).
        """
        stale = [(queue, tag) for queue, tag in self._consumers.items() if self._prefetch_of.get(tag) != share]
        if not stale:
            return
        await underlay.basic_qos(prefetch_count=share)
        for queue, old in stale:
            tag = self._consumers[queue] = await consume_inline(underlay, queue, callback)
            self._prefetch_of[tag] = share
            del self._prefetch_of[old]
            # Waited for: deliveries to the old tag may still be on their way, and the cancel-ok comes after them
            # (a nowait cancel forgets the tag's callback at once, and they would arrive to nobody).
            await underlay.basic_cancel(old)

    async def widen(self, prefetch: int) -> None:
        """Let the broker deliver up to ``prefetch`` unacked requests (only ever widened within a session).

        Every consumer but the urgent twins' is replaced by one with its share of the wider window (see
        :meth:`_reshare`): those queues' prefetch counts then sum to at most ``prefetch``.
        """
        async with self._consumer_lock:
            underlay, callback = self._underlay, self._on_message
            if underlay is None or callback is None or prefetch <= self.prefetch:
                return
            try:
                self.prefetch = prefetch
                if not self._consumers:
                    return
                await self._reshare(underlay, callback, self._share(len(self._consumers)))
            except CHANNEL_ERRORS as exc:
                raise BrokerError(f"cannot widen the prefetch window to {prefetch}: {exc!r}") from exc

    async def stop_consuming(self) -> None:
        """Ask the broker to stop delivering. What was delivered stays held until settled."""
        self._consuming = False
        for queue in list(self._consumers):
            await self.detach(queue)

    def consumer_attached(self) -> bool:
        """Whether every consumer of ours is still registered on an open channel.

        The broker cancels a consumer on its own (queue deleted, node failover) with a basic.cancel that
        aiormq handles by forgetting the consumer: the connection stays up but nothing arrives. That is the
        "connected but not consuming" state a worker must notice. (A partitioned worker may own no partition
        yet; its router is watched by the partition runner.)
        """
        underlay = self._underlay
        if underlay is None or underlay.is_closed or not self._consuming:
            return False
        if not self._consumers and self._settings.partitions == 0:
            return False
        return all(tag in underlay.consumers for tag in [*self._consumers.values(), *self._urgent.values()])

    @property
    def consumer_lock(self) -> asyncio.Lock:
        """Held while consumers change; the partition claimer counts consumers under it (a widening swap
        briefly shows two consumers of ours on a queue)."""
        return self._consumer_lock

    def consumes(self, queue: str) -> bool:
        """Whether this session consumes ``queue`` (cheaper than ``queue in attached()``)."""
        return queue in self._consumers

    def attached(self) -> frozenset[str]:
        """The queues this session consumes (the request queue or partitions; their urgent twins go with them)."""
        return frozenset(self._consumers)

    async def open_channel(self) -> aiormq.Channel:
        """A channel of its own on the consuming connection (for the partition router and its probes); when it
        closes under an error, the session is lost."""
        try:
            channel = await self._consume_conn.channel(publisher_confirms=False)
            channel.close_callbacks.add(self._on_close)
            return cast(aiormq.Channel, await channel.get_underlay_channel())
        except CHANNEL_ERRORS as exc:
            raise BrokerError(f"cannot open a channel: {exc!r}") from exc

    async def consumers_of(self, queue: str) -> int:
        """The consumers the broker counts on ``queue`` now (a passive declare: ``queue`` must exist, as the queues
        declared at :meth:`open` do; a missing one closes the publishing channel, and the session is lost)."""
        try:
            declared = await self._publish_channel.declare_queue(queue, passive=True)
        except CHANNEL_ERRORS as exc:
            raise BrokerError(f"cannot count the consumers of {queue!r}: {exc!r}") from exc
        return int(declared.declaration_result.consumer_count or 0)

    def held(self) -> list[Delivery]:
        """Deliveries of this session not yet settled (those taken from the router too)."""
        held = cast(list[Delivery], self._settler.unsettled())
        for settler in self._other_settlers:
            held += [d for d in settler.unsettled() if isinstance(d, Delivery)]
        return held

    @property
    def consuming(self) -> bool:
        return self._consuming and not self.lost.is_set()

    # -- settling
    def settle(self, deliveries: list[Delivery], how: Settle) -> None:
        """Decide to ack, dead-letter or requeue deliveries of this session, each once; the frames follow (in
        the order decided, from one task: see :class:`~snapworker.amqp.settler.Settler`). Deliveries of an older
        session are skipped: the broker has requeued them already. ``on_settled``, if set, sees each delivery
        settled here, once (the runtime's request lifecycle)."""
        fresh = [d for d in deliveries if d.session is self and not d.settled]
        if self._held_elsewhere:
            elsewhere = [d for d in fresh if d.settler is not None and d.settler is not self._settler]
            self._held_elsewhere -= len(elsewhere)
            for settler in self._other_settlers:
                settler.decide([d for d in elsewhere if d.settler is settler], how)
        # (those decided above are settled now, and skipped here)
        self._settler.decide(fresh, how)
        if fresh and self._on_room is not None:
            self._on_room()
        if self.on_settled is not None:
            for delivery in fresh:
                self.on_settled(delivery)

    async def settlements_sent(self) -> None:
        """Wait until every settlement decided so far has reached the broker (call it before :meth:`close`)."""
        for settler in (self._settler, *self._other_settlers):
            await settler.sent(self.prefetch)

    # -- publishing
    async def publish_many(self, messages: Sequence[Message]) -> list[BrokerError | None]:
        """Publish persistent messages (mandatory) and wait for their confirms; one outcome per message.

        ``None`` means confirmed; UnroutableResult means no such queue (the broker returned it); MessageTooLarge
        means it was too large to send (nothing was); another BrokerError means the broker refused it or the
        connection failed (the session is then lost). Many
        calls may wait for confirms at once; a call's messages share one channel lock and one write.
        """
        outgoing = [
            Outgoing(
                m.body,
                m.queue,
                spec.Basic.Properties(
                    content_type=m.content_type,
                    delivery_mode=2,  # persistent
                    correlation_id=m.correlation_id,
                    message_id=m.message_id,
                    headers=dict(m.headers) if m.headers else None,
                ),
            )
            for m in messages
        ]
        try:
            channel = self._publish_underlay or await self._open_publish_underlay()
            outcomes = await publish_confirmed(channel, outgoing)
        except _PUBLISH_ERRORS as exc:
            self._on_close(self, exc)
            return [BrokerError(f"publishing failed: {exc!r}") for _ in messages]
        return [self._translate(m, outcome) for m, outcome in zip(messages, outcomes, strict=True)]

    def _translate(self, message: Message, outcome: BaseException | None) -> BrokerError | None:
        if outcome is None:
            return None
        if isinstance(outcome, BrokerError):  # MessageTooLarge: refused before it was sent, the channel is fine
            return outcome
        if isinstance(outcome, aiormq.exceptions.PublishError):
            return UnroutableResult(f"no queue {message.queue!r} to take the message")
        if not isinstance(outcome, aiormq.exceptions.DeliveryError):
            self._on_close(self, outcome)  # the channel or connection failed under the publish
        return BrokerError(f"publishing to {message.queue!r} failed: {outcome!r}")

    async def forward(self, messages: Sequence[Outgoing]) -> list[BrokerError | None]:
        """Publish messages as they are (properties untouched) and wait for their confirms, like
        :meth:`publish_many`: the partition router moves requests with it."""
        try:
            channel = self._publish_underlay or await self._open_publish_underlay()
            outcomes = await publish_confirmed(channel, messages)
        except _PUBLISH_ERRORS as exc:
            self._on_close(self, exc)
            return [BrokerError(f"forwarding failed: {exc!r}") for _ in messages]
        return [
            None if outcome is None else BrokerError(f"forwarding to {m.queue!r} failed: {outcome!r}")
            for m, outcome in zip(messages, outcomes, strict=True)
        ]

    async def dead_letter(self, deliveries: Sequence[tuple[Delivery, str]]) -> int:
        """Move deliveries of this session to the dead-letter queue, each with its reason; how many went there.

        A nack cannot add a header, so a copy (body and properties as delivered, plus the ``x-snapworker-reason``
        header) is published to the dead-letter queue and confirmed, and only then is the original acked: at
        least once, never lost. A copy the broker refuses (nacked or returned): the original is nacked without
        requeue and lands there through the queue's own dead-lettering, without the reason. When the session
        is lost meanwhile, the rest stay unsettled and return to the queue.
        """
        moved = 0
        for delivery, reason in deliveries:
            if delivery.settled or delivery.session is not self or self.lost.is_set():
                continue
            envelope = delivery.envelope
            properties = spec.Basic.Properties(
                content_type=envelope.content_type,
                delivery_mode=2,  # persistent
                correlation_id=envelope.correlation_id,
                message_id=envelope.message_id,
                reply_to=delivery.reply_to,
                headers={REASON_HEADER: reason[:REASON_MAX_CHARS]},
            )
            try:
                channel = self._publish_underlay or await self._open_publish_underlay()
                # basic_publish, not the batched fast path: a request body may span several frames
                await channel.basic_publish(
                    envelope.body,
                    routing_key=self._settings.dead_letter_queue,
                    properties=properties,
                    mandatory=True,
                )
            except (aiormq.exceptions.PublishError, aiormq.exceptions.DeliveryError) as exc:
                log.error("the dead-letter copy was refused (%r): dead-lettering the message without its reason", exc)
                self.settle([delivery], "dead-letter")
            except _PUBLISH_ERRORS as exc:
                self._on_close(self, exc)
                return moved
            else:
                self.settle([delivery], "ack")
            moved += 1
        return moved

    async def _open_publish_underlay(self) -> aiormq.Channel:
        channel = cast(aiormq.Channel, await self._publish_channel.get_underlay_channel())
        self._publish_underlay = channel
        return channel
