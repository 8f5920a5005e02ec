"""Acks and nacks of one consume channel, sent in the order they were decided, as few frames as possible."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

import aio_pika
import aiormq

__all__ = ["Settleable", "Settler"]

_CHANNEL_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError)


class Settleable(Protocol):
    """A delivery as the settler sees it: its tag on the channel, and whether it was settled (decided)."""

    tag: int
    settled: bool


class Settler:
    """Holds a channel's deliveries in tag order and sends their settlements from one task.

    When the oldest unsettled deliveries are acked, a single ``basic.ack multiple=true`` covers them all (cheaper
    for the broker and the wire); the others are acked one by one at once, so a slow batch never holds back
    finished requests. ``channel()`` is the channel to send on; ``failed(exc)`` is called once it breaks (the
    broker then redelivers what was not settled).
    """

    def __init__(
        self, channel: Callable[[], aiormq.Channel | None], lost: asyncio.Event, failed: Callable[[BaseException], None]
    ) -> None:
        self._channel = channel
        self._lost = lost
        self._failed = failed
        self._held: deque[Settleable] = deque()
        self._to_ack: list[Settleable] = []
        self._to_nack: list[tuple[Settleable, bool]] = []
        self._task: asyncio.Task[None] | None = None

    def hold(self, delivery: Settleable) -> None:
        """A new delivery, in delivery order."""
        self._held.append(delivery)

    def unsettled(self) -> list[Settleable]:
        return [d for d in self._held if not d.settled]

    def decide(self, deliveries: Iterable[Settleable], how: str) -> None:
        """Ack (``how == "ack"``), requeue or reject each delivery not settled yet; the frames follow."""
        for delivery in deliveries:
            if delivery.settled:
                continue
            delivery.settled = True
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
        except _CHANNEL_ERRORS as exc:
            self._failed(exc)

    async def _send(self) -> None:
        try:
            while (self._to_ack or self._to_nack) and not self._lost.is_set():
                # Decide synchronously (no await) on a snapshot, then send in that order. Settlements decided
                # while we send wait for the next round, so a multiple ack never covers a tag that is still
                # to be nacked or acked alone.
                acks, nacks = self._to_ack, self._to_nack
                self._to_ack, self._to_nack = [], []
                prefix_end = 0
                while self._held and self._held[0].settled:
                    prefix_end = self._held.popleft().tag
                in_prefix = [d for d in acks if d.tag <= prefix_end]
                channel = self._channel()
                assert channel is not None
                # wait=False: the frames are queued in order; there is no answer to wait for
                for delivery, requeue in nacks:
                    await channel.basic_nack(delivery.tag, requeue=requeue, wait=False)
                if in_prefix:
                    await channel.basic_ack(max(d.tag for d in in_prefix), multiple=True, wait=False)
                for delivery in acks:
                    if delivery.tag > prefix_end:
                        await channel.basic_ack(delivery.tag, wait=False)
        except _CHANNEL_ERRORS as exc:
            self._failed(exc)  # the channel is gone: the broker redelivers what was not settled
        finally:
            self._task = None
