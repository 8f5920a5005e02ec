"""The partition router: it takes requests off the request queue and the urgent queue, and sends each where it
belongs (see partitioning.py for the key, docs/design.md "Partitions" for the whole).

Where a request goes:

- urgent (from the urgent queue, or urgent by its body's ``priority`` or its AMQP priority property: see
  :func:`~snapworker.amqp.partitioning.route_of`): forwarded to the urgent twin of its partition, before the rest;
- of a partition another worker consumes, or of any partition in a fleet: forwarded to that partition;
- of a partition this worker consumes, when it is the only router: handed to this worker at once while its window
  has room (no hop through the partition), up to PREFETCH of them; else it waits here for room (PREFETCH of
  them, ``_WAIT_MAX_S`` at most), and then is forwarded.

Until the first count of the routers (see :meth:`Router.fleet_size`), every request but urgent ones waits here. A
forwarded request is acked on the request queue only once its copy in the partition is confirmed (at least once);
one handed over is acked once answered, like any request the worker holds. Both go through the router channel's
settler.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import uuid
from dataclasses import dataclass

import aiormq
from aiormq.abc import DeliveredMessage

from snapworker.amqp.errors import CHANNEL_ERRORS
from snapworker.amqp.inline import consume_inline
from snapworker.amqp.partitioning import ROUTER_MADE_ID, Route, partition_queue, route_of, urgent_queue
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.session import AmqpSession
from snapworker.amqp.settler import Settler
from snapworker.errors import BrokerError
from snapworker.settings import Settings

__all__ = ["Router"]

log = logging.getLogger("snapworker.partitions")

# requests forwarded per round (one write, confirms awaited together)
_FORWARD_GROUP = 500
# a request of our own partition waits at most this long for our window before it is forwarded (see _hand_over)
_WAIT_MAX_S = 5.0
# a forward the broker refused is retried no faster than this (the partition queue may be gone)
_REFUSED_PAUSE_S = 1.0


@dataclass(eq=False, slots=True)
class _Routed:
    """A request the router holds: its tag on the router's channel (the settler's key), where it goes, since when."""

    tag: int
    message: DeliveredMessage
    route: Route
    since: float  # the loop's time at arrival
    settled: bool = False


class Router:
    """Routes the requests of the request queue and the urgent queue through ``session`` (see the module)."""

    def __init__(self, session: AmqpSession, settings: Settings) -> None:
        self._session = session
        self._settings = settings
        self._count = settings.partitions
        self._names = [partition_queue(settings.request_queue, p) for p in range(self._count)]
        self._router: aiormq.Channel | None = None
        # every request received on the router's channel is held here until settled: forwarded, or handed over
        self._settler: Settler | None = None
        self._router_tags: list[str] = []
        # to forward: requests of partitions other workers own
        self._inbox: collections.deque[_Routed] = collections.deque()
        # to forward before the inbox: the urgent queue's (their own prefetch, URGENT_PREFETCH) and urgent ones
        self._urgent_inbox: collections.deque[_Routed] = collections.deque()
        # requests of our partitions waiting for room in our window (see _hand_over); before the first claim,
        # every request but urgent ones waits here: who owns what is not known yet
        self._waiting: collections.deque[_Routed] = collections.deque()
        self._owners_known = asyncio.Event()
        self._lone = False  # see fleet_size
        self.routers_seen = 0  # the last count given to fleet_size (0: none yet)
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Consume the request queue and the urgent queue on a channel of the session's own, and start routing."""
        router = self._router = await self._session.open_channel()
        self._settler = self._session.router_settler(router, on_room=self._room)
        queue = self._settings.request_queue
        try:
            # Three times PREFETCH: the requests handed over (PREFETCH at most) and those waiting for the window
            # (PREFETCH at most) stay unacked on this channel, and PREFETCH is left for forwarding, so that a
            # backlog still moves to the partitions (where urgent requests overtake it) while the window is full.
            # (More would hold more in memory: 200,000 queued requests peaked at 163 MB with 50,000; 125 MB with
            # 20,000, but then a lone worker forwarded a fifth of a 20,000 backlog.)
            await router.basic_qos(prefetch_count=min(65535, 3 * self._settings.prefetch))
            self._router_tags.append(await consume_inline(router, queue, self._on_request))
            await router.basic_qos(prefetch_count=self._settings.urgent_prefetch)
            self._router_tags.append(await consume_inline(router, urgent_queue(queue), self._on_urgent_request))
        except CHANNEL_ERRORS as exc:
            raise BrokerError(f"cannot route from {queue!r}: {exc!r}") from exc
        self._task = asyncio.create_task(self._route())

    def fleet_size(self, routers: int) -> None:
        """How many workers route (the claimer counts them): alone, this worker takes the requests of its own
        partitions; in a fleet, everything is forwarded, and the requests held for the first count go now.

        Why not in a fleet: its partitions change hands while it settles, and a request taken stays with the worker
        that took it, splitting its project's batches (measured: a fleet started at the defaults made 163 calls
        for a minimum of 150, against 153 when it forwarded everything)."""
        self.routers_seen = routers
        lone = routers <= 1
        if self._owners_known.is_set() and lone == self._lone:
            return
        self._lone = lone
        self._owners_known.set()
        self._wake.set()

    def attached(self) -> bool:
        """Whether the router still consumes the request queue and the urgent queue (the broker may cancel a
        consumer on its own)."""
        router = self._router
        return (
            router is not None
            and not router.is_closed
            and bool(self._router_tags)
            and all(tag in router.consumers for tag in self._router_tags)
        )

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop routing: no new requests; those waiting for our window return to the request queue, those to
        forward are forwarded within ``timeout_s``, or return to the request queue with the router's channel."""
        router = self._router
        if router is not None and not router.is_closed:
            with contextlib.suppress(*CHANNEL_ERRORS):
                for tag in self._router_tags:
                    await router.basic_cancel(tag)
        # (the worker is stopping, or pausing: nothing more is handed over)
        if self._settler is not None and not self._session.lost.is_set():
            self._settler.decide(list(self._waiting), "requeue")
        self._waiting.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # The channel stays open: it closes with the session's connection (closing it here would read as a lost
        # session, and the worker would skip its drain).

    # -- routing
    def _on_request(self, message: DeliveredMessage) -> None:
        route = route_of(message.body, self._count, message.header.properties.priority)
        if route.urgent:
            self._hold(self._urgent_inbox, message, route)
        elif not self._owners_known.is_set():
            self._hold(self._waiting, message, route)  # whose it is, the first count decides
        elif self._lone and self._session.consumes(self._names[route.partition]):
            # Ours: taken at once if the window has room and nothing older waits, else as it frees (_hand_over).
            if not self._waiting and self._takes(self._names[route.partition]):
                assert self._settler is not None
                self._session.take_from_router(message, self._settler)
                return
            self._hold(self._waiting, message, route)
        else:
            self._hold(self._inbox, message, route)

    def _on_urgent_request(self, message: DeliveredMessage) -> None:
        self._hold(self._urgent_inbox, message, route_of(message.body, self._count, message.header.properties.priority))

    def _hold(self, inbox: collections.deque[_Routed], message: DeliveredMessage, route: Route) -> None:
        routed = _Routed(message.delivery_tag or 0, message, route, self._loop.time())
        assert self._settler is not None
        self._settler.hold(routed)
        inbox.append(routed)
        if inbox is not self._waiting:
            self._idle.clear()
        self._wake.set()

    def _takes(self, partition_queue: str) -> bool:
        """Whether a request of ``partition_queue`` goes to our worker now: its window has room (see
        :meth:`AmqpSession.takes_from_router`), and fewer than PREFETCH taken are held on this channel."""
        return self._session.taken_from_router < self._settings.prefetch and self._session.takes_from_router(
            partition_queue
        )

    def _hand_over(self) -> None:
        """Requests waiting for our window go to it in arrival order while it has room; one of a partition no longer
        ours goes to forwarding. Past PREFETCH waiting, the oldest waiting ones are forwarded too, so that the
        router's prefetch (see :meth:`start`) always leaves room for forwarding."""
        if not self._owners_known.is_set() or self._settler is None:
            return
        waiting = self._waiting
        # Waited too long: forwarded. Our window stays full while our partitions hold a backlog (their deliveries
        # refill it), and a request must not wait on the router's channel for that backlog: past RabbitMQ's
        # consumer timeout the broker would close the channel.
        too_old = self._loop.time() - _WAIT_MAX_S
        while waiting and waiting[0].since < too_old:
            self._inbox.append(waiting.popleft())
        while waiting:
            head = waiting[0]
            name = self._names[head.route.partition]
            if not self._lone or not self._session.consumes(name):
                self._inbox.append(waiting.popleft())
            elif self._takes(name):
                waiting.popleft()
                # held again under the same tag, in the same place of the settler's order
                self._session.take_from_router(head.message, self._settler)
            else:
                break
        while len(waiting) > self._settings.prefetch:
            # the oldest: in the partition they queue ahead of what is forwarded later, so none waits forever
            self._inbox.append(waiting.popleft())
        if self._inbox:
            self._idle.clear()

    def _room(self) -> None:
        """The session settled requests: some waiting ones may fit in its window now."""
        if self._waiting:
            self._wake.set()

    async def _route(self) -> None:
        while True:
            if self._waiting:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_WAIT_MAX_S / 4):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            self._hand_over()
            while self._urgent_inbox or self._inbox:
                if self._session.lost.is_set():
                    # Checked before every forward, not after: the broker returns every request still unsettled
                    # on the router's channel when the session's connection closes, so a copy forwarded now
                    # would be a second one of a request that is redelivered anyway.
                    self._urgent_inbox.clear()
                    self._inbox.clear()
                    self._waiting.clear()
                    break
                # The urgent queue's requests first, whatever the backlog in the inbox.
                urgent = bool(self._urgent_inbox)
                group, outgoing = self._next_group(self._urgent_inbox if urgent else self._inbox, urgent)
                if not await self._forward(group, outgoing):
                    await asyncio.sleep(_REFUSED_PAUSE_S)
                self._hand_over()
            self._idle.set()

    def _next_group(
        self, inbox: collections.deque[_Routed], from_urgent_queue: bool
    ) -> tuple[list[_Routed], list[Outgoing]]:
        """Take the next requests to forward together off ``inbox``, with their copies: at most _FORWARD_GROUP,
        and no two with the same message_id (the channel matches a returned message to its confirm by its
        message_id: two equal ones in one write could report a returned copy confirmed, its request then acked)."""
        group: list[_Routed] = []
        outgoing: list[Outgoing] = []
        ids: set[str | None] = set()
        while inbox and len(group) < _FORWARD_GROUP:
            copied = self._copy_of(inbox[0], from_urgent_queue)
            if copied.properties.message_id in ids:
                break
            ids.add(copied.properties.message_id)
            group.append(inbox.popleft())
            outgoing.append(copied)
        return group, outgoing

    def _copy_of(self, routed: _Routed, from_urgent_queue: bool) -> Outgoing:
        """The copy of a request for its partition, or that partition's urgent twin when the request came from the
        urgent queue or is urgent itself: its body and properties, in new properties of its own (the publish path
        writes a message_id into those it is given when there is none; see ROUTER_MADE_ID)."""
        message, route = routed.message, routed.route
        properties = copy.copy(message.header.properties)
        if not properties.message_id:
            # A keyless request stays keyless (at least once, as unpartitioned): an id derived from the body would
            # make two requests published alike one request, and answer the second from the first one's record.
            properties.message_id = uuid.uuid4().hex
            properties.headers = {**(properties.headers or {}), ROUTER_MADE_ID: True}
        queue = self._names[route.partition]
        if from_urgent_queue or route.urgent:
            queue = urgent_queue(queue)
        return Outgoing(message.body, queue, properties)

    async def _forward(self, group: list[_Routed], outgoing: list[Outgoing]) -> bool:
        """Forward the copies of ``group`` and settle each on the router's channel: acked once its copy is
        confirmed, requeued if the broker refused it; False if any was refused. (The settler acks many with one
        frame when it can: see settler.py.)"""
        if self._router is None or self._settler is None:
            return True
        outcomes = await self._session.forward(outgoing)
        if self._session.lost.is_set():
            return True  # the broker returns what we held on its own
        refused = [(r, o) for r, o in zip(group, outcomes, strict=True) if o is not None]
        self._settler.decide([r for r, o in zip(group, outcomes, strict=True) if o is None], "ack")
        if not refused:
            return True
        self._settler.decide([r for r, _ in refused], "requeue")
        log.error("%d requests could not be routed (%s); they return to the queue", len(refused), refused[0][1])
        return False
