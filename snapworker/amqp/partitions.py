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
import contextlib
import copy
import logging
import random
import uuid
from collections.abc import Callable

import aiormq
from aiormq.abc import DeliveredMessage

from snapworker.amqp.errors import CHANNEL_ERRORS
from snapworker.amqp.partitioning import ROUTER_MADE_ID, next_claim_step, partition_queue, route_of, urgent_queue
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.session import AmqpSession
from snapworker.errors import BrokerError
from snapworker.settings import Settings

__all__ = ["Partitions"]

log = logging.getLogger("snapworker.partitions")

# requests forwarded per round (one write, confirms awaited together)
_FORWARD_GROUP = 500
# how often a worker looks at the consumer counts; each look changes at most one partition
CLAIM_INTERVAL_S = 1.0
# a forward the broker refused is retried no faster than this (the partition queue may be gone)
_REFUSED_PAUSE_S = 1.0


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
        self._router: aiormq.Channel | None = None
        self._router_tags: list[str] = []
        self._inbox: list[DeliveredMessage] = []
        # from the urgent queue: forwarded before the inbox (their own prefetch, URGENT_PREFETCH)
        self._urgent_inbox: list[DeliveredMessage] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start routing at once and claiming partitions after one interval (when the fleet's routers show)."""
        router = self._router = await self._session.open_channel()
        queue = self._settings.request_queue
        try:
            await router.basic_qos(prefetch_count=self._settings.prefetch)
            ok = await router.basic_consume(queue, self._on_request, no_ack=False)
            assert ok.consumer_tag is not None
            self._router_tags.append(ok.consumer_tag)
            await router.basic_qos(prefetch_count=self._settings.urgent_prefetch)
            ok = await router.basic_consume(urgent_queue(queue), self._on_urgent_request, no_ack=False)
            assert ok.consumer_tag is not None
            self._router_tags.append(ok.consumer_tag)
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
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # The channels stay open: they close with the session's connection (closing one here would read as a
        # lost session, and the worker would skip its drain).

    # -- routing
    async def _on_request(self, message: DeliveredMessage) -> None:
        self._inbox.append(message)
        self._idle.clear()
        self._wake.set()

    async def _on_urgent_request(self, message: DeliveredMessage) -> None:
        self._urgent_inbox.append(message)
        self._idle.clear()
        self._wake.set()

    async def _route(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._urgent_inbox or self._inbox:
                if self._session.lost.is_set():
                    # Checked before every forward, not after: the broker returns every request still unsettled
                    # on the router's channel when the session's connection closes, so a copy forwarded now
                    # would be a second one of a request that is redelivered anyway.
                    self._urgent_inbox.clear()
                    self._inbox.clear()
                    break
                # The urgent queue's requests first, whatever the backlog in the inbox.
                urgent = bool(self._urgent_inbox)
                group, outgoing = self._next_group(self._urgent_inbox if urgent else self._inbox, urgent)
                # A group of the inbox follows every urgent request received before it, settled (forwarded
                # first), so it holds every unsettled tag up to its last: a multiple ack covers exactly it. An
                # urgent group may overtake requests of the inbox: each is acked alone.
                if not await self._forward(group, outgoing, in_order=not urgent):
                    await asyncio.sleep(_REFUSED_PAUSE_S)
            self._idle.set()

    def _next_group(
        self, inbox: list[DeliveredMessage], from_urgent_queue: bool
    ) -> tuple[list[DeliveredMessage], list[Outgoing]]:
        """Take the next requests to forward together off ``inbox``, with their copies: at most _FORWARD_GROUP,
        and no two with the same message_id (the channel matches a returned message to its confirm by its
        message_id: two equal ones in one write could report a returned copy confirmed, its request then acked)."""
        group: list[DeliveredMessage] = []
        outgoing: list[Outgoing] = []
        ids: set[str | None] = set()
        for message in inbox[:_FORWARD_GROUP]:
            copied = self._copy_of(message, from_urgent_queue)
            if copied.properties.message_id in ids:
                break
            ids.add(copied.properties.message_id)
            group.append(message)
            outgoing.append(copied)
        del inbox[: len(group)]
        return group, outgoing

    def _copy_of(self, message: DeliveredMessage, from_urgent_queue: bool) -> Outgoing:
        """The copy of a request for its partition, or that partition's urgent twin when the request came from the
        urgent queue or is urgent itself: its body and properties, in new properties of its own (the publish path
        writes a message_id into those it is given when there is none; see ROUTER_MADE_ID)."""
        properties = copy.copy(message.header.properties)
        route = route_of(message.body, self._count, properties.priority)
        if not properties.message_id:
            # A keyless request stays keyless (at least once, as unpartitioned): an id derived from the body would
            # make two requests published alike one request, and answer the second from the first one's record.
            properties.message_id = uuid.uuid4().hex
            properties.headers = {**(properties.headers or {}), ROUTER_MADE_ID: True}
        queue = partition_queue(self._settings.request_queue, route.partition)
        if from_urgent_queue or route.urgent:
            queue = urgent_queue(queue)
        return Outgoing(message.body, queue, properties)

    async def _forward(self, group: list[DeliveredMessage], outgoing: list[Outgoing], *, in_order: bool) -> bool:
        """Forward the copies of ``group`` (delivery-tag order) and settle it on the router channel; False if any
        was refused. ``in_order``: every delivery before the group's last is settled or in the group."""
        router = self._router
        if router is None:
            return True
        outcomes = await self._session.forward(outgoing)
        if self._session.lost.is_set():
            return True  # the broker returns what we held on its own
        refused = [(m, o) for m, o in zip(group, outcomes, strict=True) if o is not None]
        try:
            if not refused and in_order:
                # Every earlier group is settled already, so one multiple ack covers exactly this group.
                await router.basic_ack(group[-1].delivery_tag or 0, multiple=True, wait=False)
                return True
            for message, outcome in zip(group, outcomes, strict=True):
                if outcome is None:
                    await router.basic_ack(message.delivery_tag or 0, wait=False)
                else:
                    await router.basic_nack(message.delivery_tag or 0, requeue=True, wait=False)
        except CHANNEL_ERRORS as exc:
            log.warning("the router's channel failed (%r): unsettled requests return to the queue", exc)
            return True
        if not refused:
            return True
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
