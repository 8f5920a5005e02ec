"""The broker side of key affinity (see partitioning.py): a router from the request queue to the partitions
(router.py), and a claimer that keeps this worker consuming its share of them.

Both live exactly as long as their :class:`AmqpSession`: a channel of theirs that closes under an error ends the
session, and the worker opens a new one as for any broker failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import aiormq

from snapworker.amqp.errors import CHANNEL_ERRORS
from snapworker.amqp.partitioning import next_claim_step, partition_queue
from snapworker.amqp.router import Router
from snapworker.amqp.session import AmqpSession
from snapworker.errors import BrokerError
from snapworker.settings import Settings

__all__ = ["Partitions"]

log = logging.getLogger("snapworker.partitions")

# how often a worker looks at the consumer counts; each look changes at most one partition
CLAIM_INTERVAL_S = 1.0


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
        self._router = Router(session, settings)
        self._claimer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start routing at once and claiming partitions after one interval (when the fleet's routers show)."""
        await self._router.start()
        probe = await self._session.open_channel()
        # Claims begin one interval later, once the fleet's routers show: claiming at once let the first worker of
        # a fleet take every partition and prefetch the whole backlog before the others joined (measured: a fleet
        # at the defaults drained 2.6x slower).
        self._claimer = asyncio.create_task(self._claim(probe))

    def attached(self) -> bool:
        """Whether the router still consumes the request queue and the urgent queue."""
        return self._router.attached()

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop claiming and routing (see :meth:`Router.stop`)."""
        if self._claimer is not None:
            self._claimer.cancel()
            await asyncio.gather(self._claimer, return_exceptions=True)
        await self._router.stop(timeout_s)

    # -- claiming
    async def _claim(self, probe: aiormq.Channel) -> None:
        await self._first_interval(probe)
        while True:
            try:
                await self._claim_step(probe)
            except BrokerError as exc:
                log.warning("partition claim failed: %s", exc)
                self._router.fleet_size(self._router.routers_seen or 2)  # not known: forward, as in a fleet
            except CHANNEL_ERRORS as exc:
                log.warning("cannot read the partitions' consumers (%r); the session ends", exc)
                self._session.lost_reason = f"partition probe failed: {exc!r}"
                self._session.lost.set()
                return
            await asyncio.sleep(self._claim_interval_s * random.uniform(0.75, 1.25))

    async def _first_interval(self, probe: aiormq.Channel) -> None:
        """Wait one interval before the first claim, looking every fifth of it for other routers: the router holds
        what it receives until it knows whether it is alone (see Router.fleet_size), and a fleet started at once
        must not wait the whole interval for it (its backlog should be in the partitions when they are claimed)."""
        interval = self._claim_interval_s * random.uniform(0.75, 1.25)
        loop = asyncio.get_running_loop()
        # a deadline, not five sleeps: a look's round trip waits behind the deliveries the router is reading
        deadline = loop.time() + interval
        fleet = False
        while (left := deadline - loop.time()) > 0:
            await asyncio.sleep(min(interval / 5, left))
            if fleet or loop.time() >= deadline:
                continue
            try:
                routers = (await probe.queue_declare(self._settings.request_queue, passive=True)).consumer_count
            except CHANNEL_ERRORS:
                return  # the claim step finds the channel broken too, and ends the session
            if (routers or 1) > 1:
                self._router.fleet_size(routers or 1)
                fleet = True

    async def _claim_step(self, probe: aiormq.Channel) -> None:
        names = [partition_queue(self._settings.request_queue, p) for p in range(self._count)]
        # Counted under the consumer lock: a widening swap briefly shows two consumers of ours on one queue.
        async with self._session.consumer_lock:
            workers = (await probe.queue_declare(self._settings.request_queue, passive=True)).consumer_count
            counts = {p: (await probe.queue_declare(name, passive=True)).consumer_count for p, name in enumerate(names)}
            attached = self._session.attached()
        if self._on_workers is not None:
            self._on_workers(workers or 1)
        try:
            await self._claim_or_release(names, attached, counts, workers or 1)
        finally:
            # after the claim: a lone worker's router hands over what it holds to the partitions claimed now
            self._router.fleet_size(workers or 1)

    async def _claim_or_release(
        self, names: list[str], attached: frozenset[str], counts: dict[int, int | None], workers: int
    ) -> None:
        owned = frozenset(p for p, name in enumerate(names) if name in attached)
        consumers = {p: c or 0 for p, c in counts.items()}
        if (workers) == 1:
            await self._claim_every_free(names, owned, consumers)
            return
        step = next_claim_step(owned, consumers, workers, self._order, random.random())
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
            workers,
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
