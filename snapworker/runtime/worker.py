"""The worker: wiring only. Deliveries -> batching core -> API -> results -> acks, over broker sessions.

The parts each live elsewhere: reading messages (intake), batching (core), the sender task that turns ready
keys into granted calls (dispatch), calling the API (sending, cloud), the broker (amqp), counters (stats). This
module connects them: it feeds the core, wakes the sender, widens the prefetch window as more merge keys are
busy, publishes each finished result and settles its message only after the broker confirmed the result.
Delivery is at least once: see README.md, "Delivery guarantee".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from snapworker.amqp.partitions import Partitions
from snapworker.amqp.session import AmqpSession, Delivery
from snapworker.cloud.limiter import Limiter
from snapworker.contract.intake import Accepted, Rejected, read_request
from snapworker.contract.models import SnapshotResult
from snapworker.core import Batch, BatchingCore, Outcome, WindowPolicy
from snapworker.errors import BrokerError, BrokerRefused
from snapworker.failpoints import configure as configure_failpoints
from snapworker.idempotency import Idempotency, build_idempotency
from snapworker.idempotency.reconcile import Reconciler
from snapworker.ops.progress import ProgressReporter, log_problem_result
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.dispatch import Dispatcher
from snapworker.runtime.guard import DeliveryGuard
from snapworker.runtime.results import ResultPublisher
from snapworker.runtime.sending import BatchSender, SnapshotApi
from snapworker.settings import Settings, redact_url

if TYPE_CHECKING:
    from snapworker.cloud.accounts import AccountRouter
    from snapworker.ops.health import HealthServer
    from snapworker.ops.metrics import ApiMetrics
    from snapworker.tracking.loop import Tracker

__all__ = ["Worker"]

log = logging.getLogger("snapworker.worker")

_RECONNECT_MAX_S = 30.0
# at the end of a drain, how long the calls whose leases lapsed get to record that they sent nothing more
_CALLS_GRACE_S = 1.0


class Worker:
    """A snapshot worker, embeddable in any asyncio application.

    ``await worker.run()`` consumes until ``await worker.close()`` (or SIGTERM via the CLI) and then drains:
    open batches are sent at once, in-flight calls and result publishing get ``SHUTDOWN_TIMEOUT_S``, and what is
    still unfinished is requeued. ``api`` replaces the Workspace client (tests, simulations).
    """

    def __init__(self, settings: Settings, *, api: SnapshotApi | None = None) -> None:
        self.settings = settings
        self.stats = WorkerStats()
        self._api = api
        self._core = BatchingCore(
            settings.max_batch,
            settings.linger_s,
            hold_s=settings.hold_max_s,
            starve_s=settings.starve_s,
            # calls the limiter grants without making anyone wait: beyond this, calls are scarce
            calls_at_once=settings.rate_burst + settings.rate_limit * settings.linger_s,
            window=settings.prefetch,
        )
        self._window = WindowPolicy(
            floor=settings.prefetch,
            ceiling=settings.prefetch_max,
            max_batch=settings.max_batch,
            desktops_per_s=settings.rate_limit * settings.max_batch,
            # half the deadline: room for the rate to be cut by throttling and for retries
            budget_s=settings.request_deadline_s / 2,
        )
        self._widening = False
        self._limiter: Limiter | None = None
        self._dispatcher: Dispatcher | None = None
        self._send_loop: asyncio.Task[None] | None = None
        self._session: AmqpSession | None = None
        self._wake = asyncio.Event()  # the sender should look at the core again
        self._progress = asyncio.Event()  # a batch was cut or a task ended (the drain waits on it)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        # one SHUTDOWN_TIMEOUT_S for the whole stop (the drain, then tracking's looks in progress), set at close()
        self._shutdown_deadline: float | None = None
        self._stopped = asyncio.Event()
        self.consuming = asyncio.Event()
        self._results = ResultPublisher(settings, self.stats)
        self._tracker: Tracker | None = None  # follows created jobs to their end (TRACK_JOBS)
        self._guard = DeliveryGuard(self.stats, self._results, self._spawn)
        # None when IDEMPOTENCY_STORE=off: then at least once only (see README, "Idempotency")
        self._idem: Idempotency | None = build_idempotency(
            settings,
            self._core,
            submit=self._submit,
            answer=self._answer_from_record,
            spawn=self._spawn,
            fail=lambda deliveries, exc, doing: self._guard.fail(deliveries, exc, doing=doing),
        )

    # -- public lifecycle
    async def run(self) -> None:
        """Serve until closed. Reconnects with backoff whenever the session is lost or cannot consume."""
        self._stopped.clear()
        configure_failpoints(self.settings.failpoints)
        owned_api = None
        health: HealthServer | None = None
        observer: ApiMetrics | None = None
        if self.settings.metrics_port is not None:
            # imported here: prometheus-client and aiohttp.web cost start-up time a worker without metrics saves
            from snapworker.ops.health import HealthServer
            from snapworker.ops.metrics import build_registry

            registry, observer = build_registry(self)
            health = HealthServer(
                registry, self.ready, host=self.settings.metrics_host, port=self.settings.metrics_port
            )
            await health.start()
            log.info("metrics and health on port %d: /metrics /healthz /readyz", health.port)
        router: AccountRouter | None = None
        if self._api is None and self.settings.accounts_file:
            from snapworker.cloud.accounts import AccountRouter

            # several accounts or regions: a client and a rate budget per account, routed by project
            self._api = router = AccountRouter.from_settings(self.settings, observer=observer)
        if self._api is None:
            from snapworker.cloud.client import WorkspaceClient
            from snapworker.cloud.shared_limiter import build_limiter

            self._api = owned_api = WorkspaceClient(
                self.settings, limiter=build_limiter(self.settings), observer=observer
            )
        self._limiter = self._api.limiter
        # one reconciler for the sender (lost answers) and the gate (redeliveries): their listings share it
        reconciler = Reconciler.for_api(self._api)
        if self._idem is not None:
            self._idem.use_reconciler(reconciler)
        dispatcher = self._dispatcher = Dispatcher(
            self._core,
            self._limiter,
            BatchSender(
                self._api,
                max_extra_calls=self.settings.isolate_max_extra_calls,
                max_tries=self.settings.retry_max_tries,
                busy_retry_max_s=self.settings.retry_max_time_s,  # busy desktops: tried again this long at most
                journal=self._idem.journal if self._idem is not None else None,
                reconciler=reconciler,
                reconcile_delay_s=self.settings.reconcile_delay_s,
            ),
            wake=self._wake,
            deadline_s=self.settings.request_deadline_s,
            spawn=self._spawn,
            on_cut=self._on_cut,
            on_outcome=self._on_outcome,
            renew=self._idem.journal.renew if self._idem is not None else None,
        )
        send_loop = self._send_loop = asyncio.create_task(dispatcher.run())
        if self.settings.progress_interval_s > 0:
            reporter = ProgressReporter(
                self.stats, self._core, lambda: self._limiter, interval_s=self.settings.progress_interval_s
            )
            progress_loop: asyncio.Task[None] | None = asyncio.create_task(reporter.run())
        else:
            progress_loop = None
        from snapworker.tracking import tracker_for

        self._tracker = tracker_for(self.settings, self._api)
        tracking = asyncio.create_task(self._tracker.run()) if self._tracker is not None else None
        log.info(
            "snapworker starting: broker %s, API %s (auth: %s), request queue %r",
            redact_url(self.settings.amqp_url.get_secret_value()),
            self.settings.api_url,
            self.settings.auth_mode,
            self.settings.request_queue,
        )
        try:
            await self._serve_sessions()
        finally:
            loops = [send_loop] if progress_loop is None else [send_loop, progress_loop]
            for loop_task in loops:
                loop_task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            await reconciler.close()
            if self._tracker is not None and tracking is not None:
                # after the drain (the results it published started their tracking), within what is left of the
                # one shutdown budget: a SIGTERM never takes more than SHUTDOWN_TIMEOUT_S plus the last round trips
                await self._tracker.close(deadline=self._shutdown_deadline)
                await asyncio.gather(tracking, return_exceptions=True)
            if owned_api is not None:
                await owned_api.close()
                await owned_api.limiter.close()
            if router is not None:
                await router.close()
            if health is not None:
                await health.stop()
            if self._idem is not None:
                await self._idem.close()
            # one line of totals, for operators and the benchmark: a field of its own in the JSON format
            log.info("worker totals", extra={"totals": self.stats.as_dict()})
            self._stopped.set()

    @property
    def core(self) -> BatchingCore:
        """The batching core (read-only use: metrics)."""
        return self._core

    @property
    def limiter(self) -> Limiter | None:
        """The rate limiter the worker's calls go through (None before ``run``)."""
        return self._limiter

    @property
    def idempotency(self) -> Idempotency | None:
        """The idempotency store's handle (read-only use: metrics); None when IDEMPOTENCY_STORE=off."""
        return self._idem

    def ready(self) -> bool:
        """Connected and consuming: the consumer is attached to an open channel; and the idempotency store, if
        any, answers (while it does not, requests are held, not served)."""
        session = self._session
        store_up = self._idem is None or self._idem.available
        return self.consuming.is_set() and session is not None and session.consumer_attached() and store_up

    async def close(self) -> None:
        """Stop consuming, drain within SHUTDOWN_TIMEOUT_S, requeue the rest; returns when ``run`` has ended."""
        if self._shutdown_deadline is None:
            self._shutdown_deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
        self._stopping.set()
        if self._limiter is not None:
            await self._stopped.wait()

    # -- sessions
    async def _serve_sessions(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                session = await AmqpSession.open(self.settings)
            except BrokerRefused:
                raise  # a wrong password or vhost: retrying cannot help, so run() ends (exit code 3)
            except BrokerError as exc:
                log.warning("broker unavailable (%s); retrying in %.1f s", exc, delay)
                await self._sleep_unless_stopping(delay)
                delay = min(delay * 2, _RECONNECT_MAX_S)
                continue
            self._session = session
            try:
                await self._serve(session)
            except BrokerError as exc:
                # Connected, but the broker refused the consumer (queue in exclusive use, deleted meanwhile) or
                # the session broke on the way: like an unreachable broker, retry with backoff; never end run().
                log.warning("broker session failed (%s); retrying in %.1f s", exc, delay)
            else:
                delay = 0.5
                continue
            finally:
                self.consuming.clear()
                self._forget_session(session)
                await session.close()
            await self._sleep_unless_stopping(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _serve(self, session: AmqpSession) -> None:
        self._core.window = session.prefetch
        # Partitioned, the worker consumes only the partitions it claims; its router feeds them all.
        partitions = Partitions(session, self.settings) if self.settings.partitions else None
        await session.consume(self._on_delivery, queues=[] if partitions else None)
        if partitions is not None:
            await partitions.start()
        self.consuming.set()
        log.info(
            "consuming %r (prefetch %d, up to %d as merge keys grow; batches of up to %d, linger %d ms); "
            "results to %r, errors to %r, dead letters to %r",
            self.settings.request_queue,
            session.prefetch,
            self.settings.prefetch_max,
            self.settings.max_batch,
            self.settings.linger_ms,
            self.settings.result_queue,
            self.settings.error_queue,
            self.settings.dead_letter_queue,
        )
        watchdog = asyncio.create_task(self._watch_consumer(session, partitions))
        stop = asyncio.create_task(self._stopping.wait())
        lost = asyncio.create_task(session.lost.wait())
        try:
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watchdog, stop, lost):
                task.cancel()
            if partitions is not None:
                await partitions.stop()
        if session.lost.is_set():
            log.warning(
                "broker session lost (%s): held requests return to the queue; reconnecting", session.lost_reason
            )
            return
        await self._drain(session)

    async def _watch_consumer(self, session: AmqpSession, partitions: Partitions | None) -> None:
        while True:
            await asyncio.sleep(self.settings.consumer_check_s)
            if not session.consumer_attached() or (partitions is not None and not partitions.attached()):
                log.error("connected but not consuming: the broker cancelled our consumer; starting a new session")
                session.lost_reason = "consumer cancelled by the broker"
                session.lost.set()
                return

    async def _drain(self, session: AmqpSession) -> None:
        """Graceful stop: no new deliveries, flush every open batch, wait for the calls and the results they
        publish, requeue what is left at SHUTDOWN_TIMEOUT_S."""
        await session.stop_consuming()
        self.consuming.clear()
        self._core.close()  # every pending desktop may go now, full or not, as the limiter allows
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = self._shutdown_deadline or loop.time() + self.settings.shutdown_timeout_s
        if self._busy():
            log.info(
                "draining: %d desktops pending, %d batches in flight, up to %.0f s",
                self._core.buffered_desktops,
                self._core.batches_in_flight,
                self.settings.shutdown_timeout_s,
            )
        # Wait for the sender to cut what is pending, for the calls, and for what finished calls spawn (a sent
        # batch hands its results to publishing): requeueing requests while they publish would answer them twice.
        while self._busy() and (remaining := deadline - loop.time()) > 0:
            self._progress.clear()
            if not self._busy():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()
        await self._stop_calls(session)
        leftovers = session.held()
        if leftovers:
            log.warning("shutdown timeout: requeueing %d unfinished requests", len(leftovers))
            session.settle(leftovers, "requeue")
        await session.settlements_sent()
        log.info("drained")

    async def _stop_calls(self, session: AmqpSession) -> None:
        """In order: no new call is granted, the requests still unanswered leave the core (they are requeued,
        never answered by a late outcome), the calls in flight send no further try (each records its batch as
        not sent), and whatever still runs after a short grace is cancelled."""
        if self._send_loop is not None:
            self._send_loop.cancel()
            await asyncio.gather(self._send_loop, return_exceptions=True)
        self._core.drop(session.held())
        if self._idem is not None:
            self._idem.forget(session.held())
        if self._dispatcher is not None:
            self._dispatcher.lapse_all()
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            await asyncio.wait(pending, timeout=_CALLS_GRACE_S)
        pending = {t for t in self._tasks if not t.done()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _busy(self) -> bool:
        return self._core.buffered_desktops > 0 or any(not t.done() for t in self._tasks)

    def _forget_session(self, session: AmqpSession) -> None:
        # The broker requeues every unsettled delivery of a closed channel; forget them here so that nothing
        # of theirs is ever settled on another channel. Batches already sent keep going: a redelivered request
        # for one of their desktops waits for that same call instead of sending it again.
        self._core.drop(session.held())
        if self._idem is not None:
            self._idem.forget(session.held())
        if self._dispatcher is not None and (lapsed := self._dispatcher.lapse_orphans()):
            # their requests are redelivered, maybe to another worker: a late try would race its call
            log.info("%d batches in flight lost their requests with the session: they send no further try", lapsed)
        if self._session is session:
            self._session = None

    # -- deliveries
    def _on_delivery(self, delivery: Delivery) -> None:
        if self._stopping.is_set():
            return  # delivered while stopping: the drain requeues it
        try:
            self._take(delivery)
        except Exception as exc:  # last resort: a bug must not leave the message held, nor stop the consumer
            # forget what the core took of it, or a batch outcome would answer it a second time
            with contextlib.suppress(Exception):
                self._core.drop([delivery])
            self._guard.fail([delivery], exc, doing="reading and holding a request")

    def _take(self, delivery: Delivery) -> None:
        self.stats.requests_received += 1
        read = read_request(delivery.envelope, max_bytes=self.settings.max_message_bytes, now=datetime.now(UTC))
        if isinstance(read, Rejected):
            log_problem_result(read.result)
            self.stats.count_result(read.result)
            self._spawn(self._results.publish([(delivery, read.result)], settle="dead-letter"), (delivery,))
            return
        if self._idem is not None and self._idem.admit(delivery, read):
            return  # looked up first: answered from its record, or submitted once known to need a call
        self._submit(delivery, read)

    def _submit(self, delivery: Delivery, read: Accepted) -> None:
        loop = asyncio.get_running_loop()
        try:
            if self._core.submit(delivery, read.request, read.request_id, read.correlation_id, loop.time()):
                self._wake.set()
        except Exception as exc:  # as in _on_delivery: a bug must not leave the message held
            with contextlib.suppress(Exception):
                self._core.drop([delivery])
            self._guard.fail([delivery], exc, doing="holding a request")
            return
        self._maybe_widen()

    def _answer_from_record(self, delivery: Delivery, result: SnapshotResult) -> None:
        """A request answered from its idempotency record: published (and acked) without a call. Its jobs are
        tracked again: the first answer may never have gone out (a worker killed between recording the outcome
        and publishing it), and a job followed twice only means its completion may come twice (at least once,
        as results do)."""
        log_problem_result(result)
        self.stats.count_result(result)
        self._spawn(self._answer([(delivery, result)]), (delivery,))

    # -- the window: widened as more merge keys are active, so that their batches can fill
    def _maybe_widen(self) -> None:
        window = self._core.window
        session = self._session
        # Looked at only when the window is nearly full: then what it holds shows how many keys are busy.
        if window is None or self._core.open_requests < 0.9 * window or session is None or not session.consuming:
            return
        wanted = self._window.size(self._core.active_keys, self._core.desktops_per_request)
        if wanted < window * 1.1:
            return  # not worth a consumer swap
        # The core counts with the wider window at once: a window about to grow is not full, and flushing under
        # "pressure" meanwhile would cut small batches that the next deliveries would have filled.
        self._core.window = wanted
        if not self._widening:
            self._widening = True
            self._spawn(self._widen(session))

    async def _widen(self, session: AmqpSession) -> None:
        try:
            while self._session is session and session.prefetch < (target := self._core.window or 0):
                await session.widen(target)
                log.info(
                    "prefetch window widened to %d requests (%d merge keys active)", target, self._core.active_keys
                )
        except BrokerError as exc:
            log.warning("%s", exc)
        finally:
            self._widening = False
            if self._session is session:
                self._core.window = session.prefetch

    # -- sending and results
    def _on_cut(self, batch: Batch) -> None:
        self.stats.count_batch(batch)
        self._progress.set()
        self._maybe_widen()

    async def _on_outcome(self, batch: Batch, outcome: Outcome) -> None:
        for entry in outcome:
            job_id = getattr(entry, "job_id", None)
            log.debug(
                "batch %d (%s, %d desktops): %s",
                batch.id,
                batch.reason,
                len(entry.desktop_ids),
                f"job {job_id}" if job_id else f"error {getattr(entry, 'error_code', '?')}",
                extra={"project_id": batch.key.project_id, "batch_id": batch.id, "job_id": job_id},
            )
        answered: list[tuple[Delivery, SnapshotResult]] = []
        waiting = list(self._core.waiting(batch))
        try:
            finished_requests = self._core.complete(batch.id, outcome, datetime.now(UTC))
        except Exception as exc:  # a bug must not leave the batch's requests held until the session ends
            with contextlib.suppress(Exception):
                self._core.drop(waiting)
            self._guard.fail([t for t in waiting if isinstance(t, Delivery)], exc, doing=f"finishing batch {batch.id}")
            return
        finally:
            self._wake.set()  # with nothing in flight, a full window may now be sent as it is (pressure)
        try:
            for finished in finished_requests:
                assert isinstance(finished.ticket, Delivery)
                result = finished.result if self._idem is None else self._idem.finish(finished.ticket, finished.result)
                log_problem_result(result)
                self.stats.count_result(result)
                answered.append((finished.ticket, result))
            if answered:
                await self._answer(answered)
        except Exception as exc:  # after the core forgot them, only this task holds them: never strand them
            tickets = [f.ticket for f in finished_requests if isinstance(f.ticket, Delivery)]
            self._guard.fail(tickets, exc, doing=f"answering batch {batch.id}")

    async def _answer(self, answered: list[tuple[Delivery, SnapshotResult]]) -> None:
        """Start tracking the results' jobs, then publish them and ack their requests. Tracking never keeps a
        result from going out: a tracker that fails only costs those requests their completion."""
        if self._tracker is not None:
            # confirmed before the requests are acked: a request whose result went out has its jobs followed
            try:
                await self._tracker.start([(result, delivery.reply_to) for delivery, result in answered])
            except Exception:
                log.exception("tracking the jobs of %d results failed: they go out without completions", len(answered))
        await self._results.publish(answered, settle="ack")

    # -- helpers
    def _spawn(self, coro: Coroutine[Any, Any, None], deliveries: Sequence[Delivery] = ()) -> None:
        """Run ``coro`` as a tracked task; if it raises, the guard settles ``deliveries`` (the messages it handles)."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._task_done(done, deliveries))

    def _task_done(self, task: asyncio.Task[None], deliveries: Sequence[Delivery]) -> None:
        self._tasks.discard(task)
        self._progress.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._guard.fail(deliveries, exc, doing="a worker task")

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
