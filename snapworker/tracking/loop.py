"""The tracking loop on RabbitMQ: durable tracking messages waiting in TTL queues, read by every worker.

Its queues (wait queues, the tracking queue, the completion queue if set) are in
:mod:`snapworker.tracking.topology`. Only requests whose completion somebody asked for are tracked: a request
with a ``reply_to``, or any request when SNAPWORKER_COMPLETION_QUEUE is set (:func:`completion_queue_of`).

A tracking message's body is a :class:`~snapworker.tracking.state.TrackingUnit`: the whole state of its jobs and
requests. A worker that gets one reads the jobs (one GET per job still running, under the read budget), then
publishes the completions of the requests that are done and, if any are left, the next tracking message into the
wait queue of the next delay; only when the broker confirmed all of them is the message acked. That ack is the
commit point: the message held by one consumer at a time is the single owner of its jobs' state, and a worker
that dies holding it leaves it unacked, so the broker hands it to another worker, which looks again and
finishes. A tracking message is never held across a wait, so the broker's acknowledgement timeout never applies.

**The duplicate window.** A worker that dies after its completions (or next tracking message) were confirmed
and before its ack reached the broker (normally well under a millisecond, at most a network round trip) leaves
both the old message and the new ones: a request's completion may then be published twice. Each completion's
AMQP ``message_id`` is ``completion:<request_id>:<unit_id>``, the same both times, so consumers deduplicate by it.
With TRACKING_QUEUE_TYPE=quorum (the default) the wait queues dead-letter at least once, so a broker node that
crashes while a message moves from a wait queue to the tracking queue does not lose it; classic queues
dead-letter at most once (see docs/queues.md).

A look's completions and its next tracking message go out in one confirmed write
(:mod:`snapworker.tracking.publisher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pydantic import ValidationError

from snapworker.amqp.errors import CONNECTION_ERRORS
from snapworker.amqp.publish import Outgoing
from snapworker.amqp.reconnect import keep_serving
from snapworker.amqp.session import connection_name
from snapworker.cloud.jobs import JobReader
from snapworker.contract.models import SnapshotCompletion, SnapshotResult
from snapworker.errors import BrokerError
from snapworker.settings import Settings
from snapworker.tracking.backlog import Backlog
from snapworker.tracking.look import look
from snapworker.tracking.publisher import TRACKING_TYPE, TrackingPublisher, commit_look, tracking_message
from snapworker.tracking.state import TrackingUnit, completion_queue_of, start_unit
from snapworker.tracking.stats import TrackingStats
from snapworker.tracking.topology import declare_tracking_topology, schedule_of, tracking_queues, wait_queue

__all__ = ["TRACKING_TYPE", "Tracker", "declare_tracking_topology", "schedule_of", "tracking_queues"]

log = logging.getLogger("snapworker.tracking")


# a look's commit (its publishes and the ack) fails with these
_COMMIT_ERRORS: tuple[type[BaseException], ...] = (BrokerError, *CONNECTION_ERRORS)


class Tracker:
    """One worker's part of the tracking loop. ``await run()`` consumes tracking messages until :meth:`close`;
    :meth:`start` begins tracking the jobs of finished results. ``rng`` is for tests."""

    def __init__(self, settings: Settings, reader: JobReader, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._reader = reader
        self._schedule = schedule_of(settings)
        self._rng = rng or random.Random()
        self._publish: TrackingPublisher | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._deadline = 0.0  # on the loop's clock, set by close(): when looks and catching up must have ended
        self._handling: set[asyncio.Task[Any]] = set()
        self.backlog = Backlog()  # units not yet published: results never wait for the tracking connection
        self.units_started = 0  # units whose first tracking message was published (at once or from the backlog)
        self.looks = 0  # tracking messages handled: each reads every job of its unit still running, once
        self.completions_published = 0
        self.requests_untracked = 0  # requests with jobs whose completion nobody asked for: not tracked at all
        self.completions_undeliverable = 0  # reply_to gone and no COMPLETION_QUEUE to fall back to: dropped
        self.stats = TrackingStats(held=self._handling)  # what the metrics read besides the counters above

    @property
    def reads(self) -> int:
        return self._reader.reads

    # -- starting: called by the worker before it acks the requests
    async def start(self, answered: Sequence[tuple[SnapshotResult, str | None]]) -> bool:
        """Begin tracking the jobs in ``answered`` (results with their reply_to); never waits for the tracking
        connection and never raises, so results are never held up by tracking. Only the requests whose completion
        somebody asked for are tracked (:func:`~snapworker.tracking.state.completion_queue_of`); the others are
        counted in :attr:`requests_untracked` and cost nothing more.

        Returns True when the unit's first tracking message was published now, confirmed, into the first wait
        queue (or there was nothing to track). Returns False when the tracking connection is not ready or the
        publish failed: the unit is then kept in :attr:`backlog` and published as soon as the connection is
        ready again (the requests still get their completion, later), unless the backlog overflows or the
        worker stops before it could be published; both are logged."""
        asked = [(result, to) for result, to in answered if completion_queue_of(to, self._settings.completion_queue)]
        self.requests_untracked += sum(1 for result, _ in answered if result.jobs) - sum(1 for r, _ in asked if r.jobs)
        unit = start_unit(asked, datetime.now(UTC))
        if unit is None:
            return True
        if self._ready.is_set():
            try:
                await self._send_first(unit)
            except BrokerError as exc:
                log.warning("tracking: first message of unit %s not published (%r); kept to publish later",
                            unit.unit_id, exc, extra={"job_id": ",".join(unit.jobs)})  # fmt: skip
            else:
                return True
        self.backlog.keep(unit)
        return False

    # -- the loop
    async def run(self) -> None:
        """Consume the tracking queue over a connection of its own, reconnecting with backoff, until closed."""
        try:
            await self._serve_sessions()
        finally:
            if self._stopping.is_set() and self.backlog:
                log.error("tracking: %d units left unpublished at shutdown: their requests get no completion",
                          len(self.backlog))  # fmt: skip
            totals = {
                "units_started": self.units_started,
                "units_dropped": self.backlog.dropped,
                "looks": self.looks,
                "job_reads": self._reader.reads,
                "completions_published": self.completions_published,
                "completions_undeliverable": self.completions_undeliverable,
                "requests_untracked": self.requests_untracked,
            }
            # a field of its own in the JSON format, as the worker's totals are
            log.info("tracking totals", extra={"totals": totals})

    async def _serve_sessions(self) -> None:
        # Stopping, sessions go on only to publish the backlog, until the deadline.
        await keep_serving(
            self._serve_once,
            stopping=self._stopping,
            what="tracking: broker session",
            retry_on=(*CONNECTION_ERRORS, BrokerError),  # BrokerError: _serve saw the connection drop
            go_on=lambda: not self._stopping.is_set() or bool(self.backlog and self._time_left() > 0),
            pause=self._pause,
        )

    async def _pause(self, seconds: float) -> None:
        if self._stopping.is_set():
            await asyncio.sleep(min(seconds, max(0.0, self._time_left())))
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _serve_once(self) -> None:
        conn: AbstractConnection | None = None
        try:
            conn = await self._connect()
            await self._serve(conn)
        finally:
            self._ready.clear()
            self._publish = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _connect(self) -> AbstractConnection:
        """A new tracking connection; once stopping, given no longer than the deadline (a broker that does not
        answer must not hold the shutdown up)."""
        connecting = asyncio.ensure_future(
            aio_pika.connect(
                self._settings.amqp_url.get_secret_value(),
                heartbeat=self._settings.heartbeat_s,
                client_properties={"connection_name": connection_name("tracking")},
            )
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({connecting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not connecting.done():
                await asyncio.wait({connecting}, timeout=max(0.0, self._time_left()))
            if not connecting.done():
                raise TimeoutError("no tracking connection before the shutdown deadline")
            return connecting.result()
        finally:
            stop.cancel()
            connecting.cancel()  # a no-op once it is done

    async def _serve(self, conn: AbstractConnection) -> None:
        publish = await conn.channel(publisher_confirms=True, on_return_raises=True)
        await declare_tracking_topology(publish, self._settings)
        self._publish = TrackingPublisher(cast(aiormq.Channel, await publish.get_underlay_channel()))
        lost = asyncio.Event()
        conn.close_callbacks.add(lambda *_: lost.set())
        if self._stopping.is_set():  # connected again only to publish the backlog
            await self.backlog.publish_until(self._time_left, self._send_first, lost)
            return
        consume = await conn.channel(publisher_confirms=False)
        await consume.set_qos(prefetch_count=self._settings.track_prefetch)
        queue = await consume.get_queue(self._settings.tracking_queue)
        tag = await queue.consume(self._on_message, no_ack=False)
        self._ready.set()
        waits = {asyncio.create_task(self._stopping.wait()), asyncio.create_task(lost.wait())}
        catching_up = asyncio.create_task(self.backlog.keep_publishing(self._send_first))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*waits, catching_up):
                task.cancel()
            await asyncio.gather(catching_up, return_exceptions=True)  # it puts what it held back into the backlog
        if lost.is_set():
            raise BrokerError("the tracking connection was lost")
        with contextlib.suppress(*CONNECTION_ERRORS):
            await queue.cancel(tag)
        # Let the looks in progress commit; what is left unacked returns to the queue when the connection closes.
        if self._handling:
            await asyncio.wait(set(self._handling), timeout=max(0.0, self._time_left()))
        await self.backlog.publish_until(self._time_left, self._send_first, lost)

    def _time_left(self) -> float:
        return self._deadline - asyncio.get_running_loop().time()

    async def close(self, *, deadline: float | None = None) -> None:
        """Stop taking tracking messages; until ``deadline`` (the loop's clock; else SHUTDOWN_TIMEOUT_S from now)
        looks in progress may finish and the backlog is published, reconnecting if need be. What is left unacked
        returns to the queue; units left in the backlog are logged as unpublished when ``run`` ends."""
        loop = asyncio.get_running_loop()
        self._deadline = deadline if deadline is not None else loop.time() + self._settings.shutdown_timeout_s
        self._stopping.set()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handling.add(task)
        try:
            await self._handle(message)
        except Exception:  # a bug: keep the unit (requeued after a pause, not in a tight loop) and say so
            log.exception("tracking message %s could not be handled; requeued", message.message_id)
            await asyncio.sleep(self._settings.track_first_poll_s)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.nack(requeue=True)
        finally:
            if task is not None:
                self._handling.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        try:
            unit = TrackingUnit.model_validate_json(message.body)
        except ValidationError as exc:
            log.error("dropping a tracking message that is not a tracking unit: %s", exc)
            await message.ack()
            return
        self.looks += 1
        unit.forget_unaddressed(self._settings.completion_queue)
        await self._look(unit)
        now = datetime.now(UTC)
        unit.expire(now, self._settings.track_deadline_s)
        unit.polls += 1
        done = unit.take_completions(now)
        try:
            published = await self._commit(unit, done)
            await message.ack()
        except _COMMIT_ERRORS as exc:
            # Not committed: the message stays unacked and returns to the queue with this connection, or is
            # requeued here; whoever gets it next looks again.
            log.warning("tracking unit %s not committed (%r); it will be looked at again", unit.unit_id, exc)
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.nack(requeue=True)
            return
        self.completions_published += published
        self.completions_undeliverable += len(done) - published
        if not unit.requests:
            self.stats.units_finished += 1  # no next tracking message: the unit ended here

    async def _look(self, unit: TrackingUnit) -> None:
        await look(unit, self._reader, self.stats)

    # -- publishing
    async def _commit(self, unit: TrackingUnit, done: list[tuple[SnapshotCompletion, str | None]]) -> int:
        """Publish the completions in ``done`` and, if any request is left, ``unit`` as the next tracking message,
        in one confirmed write (:func:`~snapworker.tracking.publisher.commit_look`); how many completions were
        delivered. Raises BrokerError if anything that must be kept was not confirmed (the look is then not
        committed and is done again)."""
        next_message = self._next_message(unit) if unit.requests else None
        fallback = self._settings.completion_queue
        delivered = await commit_look(self._publisher(), unit.unit_id, done, next_message, fallback)
        self.stats.count_published(delivered, unit.created_at, datetime.now(UTC))
        return len(delivered)

    def _next_message(self, unit: TrackingUnit) -> Outgoing:
        delay = self._schedule.delay(unit, datetime.now(UTC), self._rng)
        return tracking_message(unit, wait_queue(self._settings, self._schedule.tier_for(delay)), delay)

    async def _send_first(self, unit: TrackingUnit) -> None:
        (outcome,) = await self._publisher().publish([self._next_message(unit)])
        if outcome is not None:
            raise outcome
        self.units_started += 1

    def _publisher(self) -> TrackingPublisher:
        publisher = self._publish
        if publisher is None:
            raise BrokerError("the tracking connection is not open")
        return publisher
