"""The broker side of key affinity (see partitioning.py): a router from the request queue to the partitions, and a
claimer that keeps this worker consuming its share of them.

Both live exactly as long as their :class:`AmqpSession`: a channel of theirs that closes under an error ends the
session, and the worker opens a new one as for any broker failure. Nothing here holds a request: a routed request
is acked on the request queue only once its copy in the partition is confirmed (at least once).

Urgent requests (see docs/urgent.md) go to the urgent twin of their partition, which the partition's owner consumes
beside it: every request of the urgent queue ``<REQUEST_QUEUE>.urgent``, which the router consumes too and
forwards before the rest, and every request of the request queue that is urgent by its body's ``priority`` or its
AMQP priority property (:func:`~snapworker.amqp.partitioning.route_of`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiormq
from aiormq.abc import DeliveredMessage

from snapworker.amqp.errors import CHANNEL_ERRORS
from snapworker.amqp.inline import consume_inline
from snapworker.amqp.partitioning import (
    ROUTER_MADE_ID,
    Route,
    next_claim_step,
    partition_queue,
    route_of,
    urgent_queue,
)
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.session import AmqpSession
from snapworker.amqp.settler import Settler
from snapworker.errors import BrokerError
from snapworker.settings import Settings

__all__ = ["Partitions"]

log = logging.getLogger("snapworker.partitions")

# requests forwarded per round (one write, confirms awaited together)
_FORWARD_GROUP = 500
# how often a worker looks at the consumer counts; each look changes at most one partition
CLAIM_INTERVAL_S = 1.0
# a request of our own partition waits at most this long for our window before it is forwarded (see _hand_over)
_WAIT_MAX_S = 5.0
# a forward the broker refused is retried no faster than this (the partition queue may be gone)
_REFUSED_PAUSE_S = 1.0


@dataclass(eq=False, slots=True)
class _Routed:
    """A request the router holds to forward: its tag on the router's channel (the settler's key), and where to."""

    tag: int
    message: DeliveredMessage
    route: Route
    since: float  # the loop's time at arrival
    settled: bool = False


class Partitions:
    """Routes requests to partition queues and consumes this worker's share of them through ``session``."""

    def __init__(
        self,
        session: AmqpSession,
        settings: Settings,
        claim_interval_s: float = CLAIM_INTERVAL_S,
        on_workers: Callable[[int], object] | None = None,
    ) -> None:
        """``on_workers`` is told the number of routing workers (the fleet's size) at every claim step."""
        self._session = session
        self._on_workers = on_workers
        self._settings = settings
        self._count = settings.partitions
        self._claim_interval_s = claim_interval_s
        self._order = random.sample(range(self._count), self._count)
        self._names = [partition_queue(settings.request_queue, p) for p in range(self._count)]
        self._router: aiormq.Channel | None = None
        # every request received on the router's channel is held here until settled: forwarded, or taken
        self._settler: Settler | None = None
        self._router_tags: list[str] = []
        # to forward: requests of partitions other workers own
        self._inbox: collections.deque[_Routed] = collections.deque()
        # to forward before the inbox: the urgent queue's (their own prefetch, URGENT_PREFETCH) and urgent ones
        self._urgent_inbox: collections.deque[_Routed] = collections.deque()
        # requests of our partitions waiting for room in our window (see _hand_over); before the first claim,
        # every request but urgent ones waits here: who owns what is not known yet
        self._waiting: collections.deque[_Routed] = collections.deque()
        self._claimed_once = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start routing at once and claiming partitions after one interval (when the fleet's routers show)."""
        router = self._router = await self._session.open_channel()
        self._settler = self._session.router_settler(router, on_room=self._room)
        queue = self._settings.request_queue
        try:
            # The requests taken from the router (up to the window, which widens to PREFETCH_MAX) and those waiting
            # for it (one more window) stay unacked on this channel: on top of them, the router keeps PREFETCH for
            # forwarding, so that a backlog still moves to the partitions (where urgent requests overtake it)
            # while the window is full. (65535: the most basic.qos takes.)
            await router.basic_qos(prefetch_count=min(65535, 2 * self._settings.prefetch_max + self._settings.prefetch))
            self._router_tags.append(await consume_inline(router, queue, self._on_request))
            await router.basic_qos(prefetch_count=self._settings.urgent_prefetch)
            self._router_tags.append(await consume_inline(router, urgent_queue(queue), self._on_urgent_request))
        except CHANNEL_ERRORS as exc:
            raise BrokerError(f"cannot route from {queue!r}: {exc!r}") from exc
        probe = await self._session.open_channel()
        # Claims begin one interval later, once the fleet's routers show: claiming at once let the first worker of
        # a fleet take every partition and prefetch the whole backlog before the others joined (measured: a fleet
        # at the defaults drained 2.6x slower).
        self._tasks = [asyncio.create_task(self._route()), asyncio.create_task(self._claim(probe))]

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
        """Stop routing and claiming: no new requests; those received are forwarded within ``timeout_s``, or
        return to the request queue with the router's channel."""
        router = self._router
        if router is not None and not router.is_closed:
            with contextlib.suppress(*CHANNEL_ERRORS):
                for tag in self._router_tags:
                    await router.basic_cancel(tag)
        # Requests still waiting for our window return to the queue (the worker is stopping, or pausing).
        if self._settler is not None and not self._session.lost.is_set():
            self._settler.decide(list(self._waiting), "requeue")
        self._waiting.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The channels stay open: they close with the session's connection (closing one here would read as a
        # lost session, and the worker would skip its drain).

    # -- routing
    def _on_request(self, message: DeliveredMessage) -> None:
        route = route_of(message.body, self._count, message.header.properties.priority)
        if route.urgent:
            self._hold(self._urgent_inbox, message, route)
        elif not self._claimed_once.is_set():
            self._hold(self._waiting, message, route)  # whose it is, the first claim decides
        elif self._session.consumes(self._names[route.partition]):
            # Ours: taken at once if the window has room and nothing older waits, else as it frees (_hand_over).
            if not self._waiting and self._session.takes_from_router(self._names[route.partition]):
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

    def _hand_over(self) -> None:
        """Requests waiting for our window go to it in arrival order while it has room; one of a partition no longer
        ours goes to forwarding. Past one window waiting, the oldest waiting ones are forwarded too: the router
        keeps PREFETCH of its prefetch for forwarding, so that a backlog in the request queue still moves to the
        partitions, where an urgent request overtakes it (and memory holds at most two windows of them)."""
        if not self._claimed_once.is_set() or self._settler is None:
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
            if not self._session.consumes(name):
                self._inbox.append(waiting.popleft())
            elif self._session.takes_from_router(name):
                waiting.popleft()
                # held again under the same tag, in the same place of the settler's order
                self._session.take_from_router(head.message, self._settler)
            else:
                break
        while len(waiting) > self._session.prefetch:
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

    # -- claiming
    async def _claim(self, probe: aiormq.Channel) -> None:
        while True:
            await asyncio.sleep(self._claim_interval_s * random.uniform(0.75, 1.25))
            try:
                await self._claim_step(probe)
            except BrokerError as exc:
                log.warning("partition claim failed: %s", exc)
            except CHANNEL_ERRORS as exc:
                log.warning("cannot read the partitions' consumers (%r); the session ends", exc)
                self._session.lost_reason = f"partition probe failed: {exc!r}"
                self._session.lost.set()
                return
            finally:
                if not self._claimed_once.is_set():
                    self._claimed_once.set()
                    self._wake.set()  # what waited for the first claim goes to its owner now

    async def _claim_step(self, probe: aiormq.Channel) -> None:
        names = [partition_queue(self._settings.request_queue, p) for p in range(self._count)]
        # Counted under the consumer lock: a widening swap briefly shows two consumers of ours on one queue.
        async with self._session.consumer_lock:
            workers = (await probe.queue_declare(self._settings.request_queue, passive=True)).consumer_count
            counts = {p: (await probe.queue_declare(name, passive=True)).consumer_count for p, name in enumerate(names)}
            attached = self._session.attached()
        if self._on_workers is not None:
            self._on_workers(workers or 1)
        owned = frozenset(p for p, name in enumerate(names) if name in attached)
        consumers = {p: c or 0 for p, c in counts.items()}
        if (workers or 1) == 1:
            await self._claim_every_free(names, owned, consumers)
            return
        step = next_claim_step(owned, consumers, workers or 1, self._order, random.random())
        if step is None:
            return
        if step.action == "claim":
            await self._session.attach(names[step.partition])
            owned = owned | {step.partition}
        else:
            await self._session.detach(names[step.partition])
            owned = owned - {step.partition}
        log.info(
            "%s partition %s (%d routing workers; this worker now owns %d of %d)",
            "claimed" if step.action == "claim" else "released",
            names[step.partition],
            workers or 1,
            len(owned),
            self._count,
        )

    async def _claim_every_free(self, names: list[str], owned: frozenset[int], consumers: dict[int, int]) -> None:
        """The only router claims every partition nobody consumes, at once: it is the default (PARTITIONS is
        on), and one claim a step would leave a lone worker's requests waiting in unclaimed partitions for
        seconds after each start. (A partition that two workers consume goes through next_claim_step's coin.)"""
        step = next_claim_step(owned, consumers, 1, self._order, random.random())
        if step is not None and step.action == "release":
            await self._session.detach(names[step.partition])
            log.info("released partition %s (contested)", names[step.partition])
            return
        free = [p for p in self._order if p not in owned and consumers.get(p, 0) == 0]
        if not free:
            return
        await self._session.attach_many([names[p] for p in free])
        log.info(
            "claimed partitions %s (the only routing worker; it now owns %d of %d)",
            ", ".join(names[p].rsplit(".", 1)[-1] for p in free),
            len(owned) + len(free),
            self._count,
        )
