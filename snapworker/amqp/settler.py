"""Acks and nacks of one consume channel, sent in the order they were decided, as few frames as possible."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Protocol

import aiormq

from snapworker.amqp.errors import CHANNEL_ERRORS

__all__ = ["Settleable", "Settler"]


class Settleable(Protocol):
    """A delivery as the settler sees it: its tag on the channel, and whether it was settled (decided)."""

    tag: int
    settled: bool


class Settler:
    """Holds a channel's unsettled deliveries in tag order and sends their settlements from one task.

    When the oldest unsettled deliveries are acked, a single ``basic.ack multiple=true`` covers them all (cheaper
    for the broker and the wire); the others are acked one by one at once, so a slow batch never holds back
    finished requests. ``channel()`` is the channel to send on; ``failed(exc)`` is called once it breaks (the
    broker then redelivers what was not settled).

    Memory: one entry per delivery held and not yet settled (at most the deliveries the broker's prefetch lets
    out, plus what consumers cancelled in a prefetch swap had delivered), and the settlements decided but not yet
    sent (one round of frames). A delivery is forgotten when it is decided, so one delivery held for long does
    not keep the ones settled after it (nor their bodies) alive: with one held and 10,000 later ones settled, the
    settler keeps one entry (tests/test_settler.py).
    """

    def __init__(
        self, channel: Callable[[], aiormq.Channel | None], lost: asyncio.Event, failed: Callable[[BaseException], None]
    ) -> None:
        self._channel = channel
        self._lost = lost
        self._failed = failed
        # tag -> delivery, unsettled only, in delivery (tag) order: the first is the oldest unsettled one. An
        # OrderedDict, not a dict: finding the first after many deletions at the front stays O(1).
        self._unsettled: OrderedDict[int, Settleable] = OrderedDict()
        self._to_ack: list[Settleable] = []
        self._to_nack: list[tuple[Settleable, bool]] = []
        self._task: asyncio.Task[None] | None = None

    def hold(self, delivery: Settleable) -> None:
        """A new delivery, in delivery order; or another object for one held already (same tag), which keeps its
        place in that order."""
        self._unsettled[delivery.tag] = delivery

    def __len__(self) -> int:
        """How many deliveries are held and not decided yet."""
        return len(self._unsettled)

    def unsettled(self) -> list[Settleable]:
        """The deliveries held and not decided yet, in delivery order."""
        return list(self._unsettled.values())

    def decide(self, deliveries: Iterable[Settleable], how: str) -> None:
        """Ack (``how == "ack"``), requeue or reject each delivery not settled yet; the frames follow."""
        for delivery in deliveries:
            if delivery.settled:
                continue
            delivery.settled = True
            self._unsettled.pop(delivery.tag, None)
            if how == "ack":
                self._to_ack.append(delivery)
            else:
                self._to_nack.append((delivery, how == "requeue"))
        if self._task is None and not self._lost.is_set():
            self._task = asyncio.create_task(self._send())

    async def sent(self, prefetch: int) -> None:
        """Wait until every settlement decided so far has reached the broker."""
        while self._task is not None and not self._lost.is_set():
            await asyncio.shield(self._task)
        # The frames are only queued (wait=False), and closing the connection drops what is still queued: the
        # broker would redeliver requests already answered. One round trip on the same channel (a basic.qos that
        # changes nothing) is answered only after every frame queued before it.
        channel = self._channel()
        if channel is None or channel.is_closed or self._lost.is_set():
            return
        try:
            await channel.basic_qos(prefetch_count=prefetch)
        except CHANNEL_ERRORS as exc:
            self._failed(exc)

    async def _send(self) -> None:
        try:
            while (self._to_ack or self._to_nack) and not self._lost.is_set():
                # Decide synchronously (no await) on a snapshot, then send in that order. Settlements decided
                # while we send wait for the next round, so a multiple ack never covers a tag that is still
                # to be nacked or acked alone.
                acks, nacks = self._to_ack, self._to_nack
                self._to_ack, self._to_nack = [], []
                # Every delivery older than the oldest unsettled one is settled: acked or nacked in an earlier
                # round or in this one (nacks go first), so a multiple ack up to there covers only acks.
                oldest = next(iter(self._unsettled), None)
                in_prefix = [d for d in acks if oldest is None or d.tag < oldest]
                prefix_end = max((d.tag for d in in_prefix), default=0)
                channel = self._channel()
                assert channel is not None
                # wait=False: the frames are queued in order; there is no answer to wait for
                for delivery, requeue in nacks:
                    await channel.basic_nack(delivery.tag, requeue=requeue, wait=False)
                if in_prefix:
                    await channel.basic_ack(prefix_end, multiple=True, wait=False)
                for delivery in acks:
                    if delivery.tag > prefix_end:
                        await channel.basic_ack(delivery.tag, wait=False)
        except CHANNEL_ERRORS as exc:
            self._failed(exc)  # the channel is gone: the broker redelivers what was not settled
        finally:
            self._task = None
