"""Broker sessions: serve one at a time, reconnecting with backoff, and drain the last one in order.

A session's deliveries are the worker's only while it lives: when it is lost, the broker takes back every
unsettled one, so the worker forgets them at once (nothing of theirs is ever settled on another channel) and
lapses the leases of the calls that served only them (no further try of theirs is sent: the requests may
already be another worker's).

**The drain** (the worker is stopping), in order: stop consuming; let every pending desktop go as the limiter
allows and wait for the calls and the results they publish, until SHUTDOWN_TIMEOUT_S; then stop granting calls;
take the unanswered requests out of the core (no late outcome answers them); lapse every call's lease (none
sends another try; each records its batch as not sent); cancel what still runs after a short grace; requeue
what is left; then close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from snapworker.amqp.fleet import fleet_warning
from snapworker.amqp.partitions import Partitions
from snapworker.amqp.reconnect import keep_serving
from snapworker.amqp.session import AmqpSession
from snapworker.core import BatchingCore
from snapworker.core.lifecycle import Lifecycle
from snapworker.errors import BrokerError, BrokerRefused
from snapworker.idempotency import Idempotency
from snapworker.runtime.credential_pause import CredentialPause
from snapworker.runtime.intake import Intake
from snapworker.runtime.sender import Sender
from snapworker.runtime.tasks import WorkerTasks
from snapworker.settings import Settings

__all__ = ["Sessions"]

log = logging.getLogger("snapworker.worker")

# the end of the drain's budget (at most a quarter of it): for the calls whose leases lapsed to record that they
# sent nothing more
CALLS_GRACE_S = 1.0


class Sessions:
    """``stopping``: set by ``Worker.close``; ``consuming``: set while a consumer is attached. ``sender`` and
    ``stop_sending`` (ends the sender's loop: no new call is granted) are set by the worker once running."""

    def __init__(
        self,
        settings: Settings,
        core: BatchingCore,
        intake: Intake,
        tasks: WorkerTasks,
        idempotency: Idempotency | None,
        lifecycle: Lifecycle,
        *,
        wake: asyncio.Event,
        stopping: asyncio.Event,
        consuming: asyncio.Event,
        credentials: CredentialPause | None = None,
    ) -> None:
        self._settings = settings
        self._core = core
        self._intake = intake
        self._tasks = tasks
        self._idem = idempotency
        self._life = lifecycle
        self._wake = wake
        self._stopping = stopping
        self._consuming = consuming
        self._credentials = credentials or CredentialPause()
        self.current: AmqpSession | None = None
        self.served = 0  # sessions that consumed: none means the start failed (nothing to total)
        self.sender: Sender | None = None
        self.stop_sending: Callable[[], Awaitable[None]] | None = None
        # told the fleet's size (the routing workers) at every partition claim step: see Worker._share_rate
        self.share_rate: Callable[[int], None] | None = None
        self.shutdown_deadline: float | None = None  # on the loop's clock, set by Worker.close

    async def serve(self) -> None:
        """Serve sessions until stopping; raises BrokerRefused (a refusal retrying cannot fix)."""
        await keep_serving(
            self._serve_next,
            stopping=self._stopping,
            what="broker session",
            retry_on=(BrokerError,),
            fatal=(BrokerRefused,),
        )

    async def _serve_next(self) -> None:
        # the API refuses the credential: consume nothing until it works again (see .credential_pause)
        await self._credentials.wait_serving(self._stopping)
        if self._stopping.is_set():
            return
        session = await AmqpSession.open(self._settings)
        session.on_settled = self._life.settle  # settled once, then forgotten by the lifecycle
        self.current = session
        try:
            await self._serve(session)
        finally:
            self._consuming.clear()
            self._forget(session)
            await session.close()

    async def _serve(self, session: AmqpSession) -> None:
        self._core.window = session.prefetch
        await self._warn_of_a_wasteful_fleet(session)
        # Partitioned, the worker consumes only the partitions it claims; its router feeds them all.
        partitions = (
            Partitions(session, self._settings, on_workers=self.share_rate) if self._settings.partitions else None
        )
        await session.consume(self._intake.on_delivery, queues=[] if partitions else None)
        if partitions is not None:
            await partitions.start()
        self._consuming.set()
        self.served += 1
        s = self._settings
        log.info(
            "consuming %r (prefetch %d, up to %d as merge keys grow; batches of up to %d, linger %d ms); "
            "results to %r, errors to %r, dead letters to %r",
            s.request_queue,
            session.prefetch,
            s.prefetch_max,
            s.max_batch,
            s.linger_ms,
            s.result_queue,
            s.error_queue,
            s.dead_letter_queue,
        )
        watchdog = asyncio.create_task(self._watch_consumer(session, partitions))
        stop = asyncio.create_task(self._stopping.wait())
        lost = asyncio.create_task(session.lost.wait())
        refused = asyncio.create_task(self._credentials.refusing.wait())
        try:
            await asyncio.wait({stop, lost, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watchdog, stop, lost, refused):
                task.cancel()
            if partitions is not None:
                await partitions.stop()
        if session.lost.is_set():
            log.warning(
                "broker session lost (%s): held requests return to the queue; reconnecting", session.lost_reason
            )
            return
        if self._stopping.is_set():
            await self._drain(session)
            return
        await self._pause(session)

    async def _pause(self, session: AmqpSession) -> None:
        """The API refuses the credential: stop consuming, let the calls already sent end (their requests are
        answered retryable), and close the session: the broker takes back every request not sent."""
        await session.stop_consuming()
        self._consuming.clear()
        # the sender cuts no batch while the credential is refused; wait for the calls already cut, and for the
        # results they publish, within the shutdown budget
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.shutdown_timeout_s
        progress = self._tasks.progress
        while self._tasks.busy and not self._stopping.is_set() and (remaining := deadline - loop.time()) > 0:
            progress.clear()
            if not self._tasks.busy:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await progress.wait()
        await session.settlements_sent()
        unsent = len(session.held())
        log.warning("paused: %d requests not sent return to the queue until the credential works again", unsent)

    async def _warn_of_a_wasteful_fleet(self, session: AmqpSession) -> None:
        """One WARNING at start when other workers consume the request queue with settings that waste calls."""
        try:
            others = await session.consumers_of(self._settings.request_queue)
        except BrokerError as exc:
            log.debug("could not count the request queue's consumers: %r", exc)
            return
        if (warning := fleet_warning(others + 1, self._settings)) is not None:
            log.warning("%s", warning)

    async def _watch_consumer(self, session: AmqpSession, partitions: Partitions | None) -> None:
        while True:
            await asyncio.sleep(self._settings.consumer_check_s)
            if not session.consumer_attached() or (partitions is not None and not partitions.attached()):
                log.error("connected but not consuming: the broker cancelled our consumer; starting a new session")
                session.lost_reason = "consumer cancelled by the broker"
                session.lost.set()
                return

    def _forget(self, session: AmqpSession) -> None:
        # The broker requeues every unsettled delivery of a closed channel; forget them here so that nothing
        # of theirs is ever settled on another channel.
        held = session.held()
        self._core.drop(held)
        self._life.session_lost(session)
        if self._idem is not None:
            self._idem.forget(held)
        if self.sender is not None and (lapsed := self.sender.lapse_orphans()):
            # their requests are redelivered, maybe to another worker: a late try would race its call
            log.info("%d batches in flight lost their requests with the session: they send no further try", lapsed)
        if self.current is session:
            self.current = None

    # -- the drain
    def _busy(self) -> bool:
        return self._core.buffered_desktops > 0 or self._tasks.busy

    async def _drain(self, session: AmqpSession) -> None:
        """Graceful stop (see the module)."""
        await session.stop_consuming()
        self._consuming.clear()
        self._core.close()  # every pending desktop may go now, full or not, as the limiter allows
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = self.shutdown_deadline or loop.time() + self._settings.shutdown_timeout_s
        if self._busy():
            log.info(
                "draining: %d desktops pending, %d batches in flight, up to %.0f s",
                self._core.buffered_desktops,
                self._core.batches_in_flight,
                self._settings.shutdown_timeout_s,
            )
        # Wait for the sender to cut what is pending, for the calls, and for what finished calls spawn (a sent
        # batch hands its results to publishing): requeueing requests while they publish would answer them twice.
        progress = self._tasks.progress
        # the end of the budget is kept for stopping the calls (they record that they sent nothing more)
        grace_s = min(CALLS_GRACE_S, self._settings.shutdown_timeout_s / 4)
        while self._busy() and (remaining := deadline - grace_s - loop.time()) > 0:
            progress.clear()
            if not self._busy():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await progress.wait()
        await self._stop_calls(session, max(0.0, deadline - loop.time()))
        leftovers = session.held()
        if leftovers:
            log.warning("shutdown timeout: requeueing %d unfinished requests", len(leftovers))
            session.settle(leftovers, "requeue")
        await session.settlements_sent()
        log.info("drained")

    async def _stop_calls(self, session: AmqpSession, grace_s: float) -> None:
        if self.stop_sending is not None:
            await self.stop_sending()  # no new call is granted
        held = session.held()
        self._core.drop(held)
        if self._idem is not None:
            self._idem.forget(held)
        if self.sender is not None:
            self.sender.lapse_all()
        await self._tasks.settle_within(grace_s)
