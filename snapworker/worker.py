"""The worker: wiring only. Deliveries -> batching core -> API -> results -> acks, over broker sessions.

The parts each live elsewhere: reading messages (intake), batching (core), calling the API (sending, cloud),
the broker (amqp), counters (stats). This module decides *when*: it feeds the core, arms one timer at the core's
next deadline, sends what the core hands out, publishes each finished result, and settles its message only
after the broker confirmed the result. Delivery is at least once: see README.md, "Delivery guarantee".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from snapworker.amqp import AmqpSession, Delivery, Message, Settle
from snapworker.cloud.limiter import RateLimiter
from snapworker.core import Batch, BatchingCore
from snapworker.errors import BrokerError, UnroutableResult
from snapworker.health import HealthServer
from snapworker.intake import Rejected, read_request
from snapworker.metrics import ApiMetrics, build_registry
from snapworker.models import ResultError, SnapshotResult
from snapworker.sending import BatchSender, SnapshotApi
from snapworker.settings import Settings, redact_url
from snapworker.stats import WorkerStats

__all__ = ["Worker"]

log = logging.getLogger("snapworker.worker")

_RECONNECT_MAX_S = 30.0
# groups of results waiting for confirms at once (a group is up to one batch's results)
_PUBLISH_GROUPS = 16


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
        self._core = BatchingCore(settings.max_batch, settings.linger_s)
        self._sender: BatchSender | None = None
        self._session: AmqpSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self.consuming = asyncio.Event()
        self._publish_slots = asyncio.Semaphore(_PUBLISH_GROUPS)

    # -- public lifecycle
    async def run(self) -> None:
        """Serve until closed. Reconnects with backoff whenever the session is lost or cannot consume."""
        self._stopped.clear()
        owned_api = None
        health: HealthServer | None = None
        observer: ApiMetrics | None = None
        if self.settings.metrics_port is not None:
            registry, observer = build_registry(self)
            health = HealthServer(registry, self.ready, host="0.0.0.0", port=self.settings.metrics_port)
            await health.start()
            log.info("metrics and health on port %d: /metrics /healthz /readyz", health.port)
        if self._api is None:
            from snapworker.cloud.client import WorkspaceClient

            self._api = owned_api = WorkspaceClient(self.settings, observer=observer)
        self._sender = BatchSender(self._api, max_extra_calls=self.settings.isolate_max_extra_calls)
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
            if owned_api is not None:
                await owned_api.close()
            if health is not None:
                await health.stop()
            # one machine-readable line of totals, for operators and the benchmark
            log.info("worker totals %s", json.dumps(self.stats.as_dict(), sort_keys=True))
            self._stopped.set()

    @property
    def core(self) -> BatchingCore:
        """The batching core (read-only use: metrics)."""
        return self._core

    @property
    def limiter(self) -> RateLimiter | None:
        """The API client's rate limiter, when the worker uses the Workspace client."""
        limiter = getattr(self._api, "limiter", None)
        return limiter if isinstance(limiter, RateLimiter) else None

    def ready(self) -> bool:
        """Connected and consuming: the consumer is attached to an open channel."""
        session = self._session
        return self.consuming.is_set() and session is not None and session.consumer_attached()

    async def close(self) -> None:
        """Stop consuming, drain within SHUTDOWN_TIMEOUT_S, requeue the rest; returns when ``run`` has ended."""
        self._stopping.set()
        if self._sender is not None:
            await self._stopped.wait()

    # -- sessions
    async def _serve_sessions(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                session = await AmqpSession.open(self.settings)
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
        await session.consume(self._on_delivery)
        self.consuming.set()
        log.info(
            "consuming %r (prefetch %d, batches of up to %d, linger %d ms); results to %r, errors to %r, "
            "dead letters to %r",
            self.settings.request_queue,
            self.settings.prefetch,
            self.settings.max_batch,
            self.settings.linger_ms,
            self.settings.result_queue,
            self.settings.error_queue,
            self.settings.dead_letter_queue,
        )
        watchdog = asyncio.create_task(self._watch_consumer(session))
        stop = asyncio.create_task(self._stopping.wait())
        lost = asyncio.create_task(session.lost.wait())
        try:
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watchdog, stop, lost):
                task.cancel()
        if session.lost.is_set():
            log.warning(
                "broker session lost (%s): held requests return to the queue; reconnecting", session.lost_reason
            )
            return
        await self._drain(session)

    async def _watch_consumer(self, session: AmqpSession) -> None:
        while True:
            await asyncio.sleep(self.settings.consumer_check_s)
            if not session.consumer_attached():
                log.error("connected but not consuming: the broker cancelled our consumer; starting a new session")
                session.lost_reason = "consumer cancelled by the broker"
                session.lost.set()
                return

    async def _drain(self, session: AmqpSession) -> None:
        """Graceful stop: no new deliveries, flush every open batch, wait for the calls and the results they
        publish, requeue what is left at SHUTDOWN_TIMEOUT_S."""
        await session.stop_consuming()
        self.consuming.clear()
        self._cancel_timer()
        self._send_all(self._core.flush_all())
        pending = {t for t in self._tasks if not t.done()}
        if pending:
            log.info(
                "draining: %d batches and results in flight, up to %.0f s",
                len(pending),
                self.settings.shutdown_timeout_s,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.shutdown_timeout_s
            # Wait again for what the finished tasks spawned: a sent batch hands its results to new publish
            # tasks, and requeueing their requests while they publish would answer them twice.
            while pending and (remaining := deadline - loop.time()) > 0:
                await asyncio.wait(pending, timeout=remaining)
                pending = {t for t in self._tasks if not t.done()}
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        leftovers = session.held()
        if leftovers:
            log.warning("shutdown timeout: requeueing %d unfinished requests", len(leftovers))
            session.settle(leftovers, "requeue")
        await session.settlements_sent()
        log.info("drained")

    def _forget_session(self, session: AmqpSession) -> None:
        # The broker requeues every unsettled delivery of a closed channel; forget them here so that nothing
        # of theirs is ever settled on another channel. Batches already sent keep going: a redelivered request
        # for one of their desktops waits for that same call instead of sending it again.
        self._core.drop(session.held())
        if self._session is session:
            self._session = None

    # -- deliveries
    def _on_delivery(self, delivery: Delivery) -> None:
        if self._stopping.is_set():
            return  # delivered while stopping: the drain requeues it
        read = read_request(delivery.envelope, max_bytes=self.settings.max_message_bytes, now=datetime.now(UTC))
        if isinstance(read, Rejected):
            self.stats.count_result(read.result)
            self._spawn(self._publish([(delivery, read.result)], settle="dead-letter"))
            return
        had_deadline = self._core.next_deadline() is not None
        loop = asyncio.get_running_loop()
        batches = self._core.submit(delivery, read.request, read.request_id, read.correlation_id, loop.time())
        if not batches and self._core.batches_in_flight == 0 and self._core.open_requests >= self.settings.prefetch:
            # The window is full of requests waiting in open batches and nothing is in flight: nothing more can
            # arrive until something is answered, so waiting for linger would only stall. (With batches in
            # flight, their answers free the window; flushing early then would only cost calls.)
            batches = self._core.flush_largest()
        self._send_all(batches)
        if not had_deadline:
            self._arm_timer()

    # -- deadlines: one timer at the core's next deadline, never polling
    def _arm_timer(self) -> None:
        self._cancel_timer()
        deadline = self._core.next_deadline()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_deadline)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        self._timer = None
        self._send_all(self._core.due(asyncio.get_running_loop().time()))
        self._arm_timer()

    # -- sending and results
    def _send_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.stats.count_batch(batch)
            self._spawn(self._send(batch))

    async def _send(self, batch: Batch) -> None:
        assert self._sender is not None
        try:
            outcome = await self._sender.send(batch)
        except Exception as exc:  # a bug must not leave requests without a result
            log.exception("sending batch %d failed unexpectedly", batch.id)
            outcome = (
                ResultError(
                    desktop_ids=batch.desktop_ids,
                    http_status=None,
                    error_code="SNAPWORKER.INTERNAL",
                    error_msg=f"internal error: {exc!r}"[:2000],
                    retryable=True,
                ),
            )
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
        for finished in self._core.complete(batch.id, outcome, datetime.now(UTC)):
            assert isinstance(finished.ticket, Delivery)
            self.stats.count_result(finished.result)
            answered.append((finished.ticket, finished.result))
        if answered:
            await self._publish(answered, settle="ack")

    async def _publish(self, answered: list[tuple[Delivery, SnapshotResult]], *, settle: Settle) -> None:
        """Publish the results (confirmed), then settle their messages. Skipped for a session that is gone.

        A batch's results go out together (one write, confirms awaited together); PUBLISH_GROUPS bounds how
        many groups wait for confirms at once, because aiormq's confirm handling slows down with thousands
        of publishes outstanding.
        """
        by_session: dict[AmqpSession, list[tuple[Delivery, SnapshotResult]]] = {}
        for delivery, result in answered:
            if not delivery.session.lost.is_set():
                by_session.setdefault(delivery.session, []).append((delivery, result))
        for session, items in by_session.items():
            messages = [self._result_message(delivery, result) for delivery, result in items]
            async with self._publish_slots:
                outcomes = await session.publish_many(messages)
            # a reply_to queue that does not exist: the result goes to the error queue instead, never dropped
            detours = [
                i
                for i, outcome in enumerate(outcomes)
                if isinstance(outcome, UnroutableResult) and messages[i].queue != self.settings.error_queue
            ]
            if detours:
                rerouted = [self._detour(messages[i]) for i in detours]
                for i, message, outcome in zip(detours, rerouted, await session.publish_many(rerouted), strict=True):
                    outcomes[i], messages[i] = outcome, message
            published: list[Delivery] = []
            for (delivery, result), message, outcome in zip(items, messages, outcomes, strict=True):
                if outcome is not None:
                    # Not confirmed: leave the message unsettled; it returns to the queue with its channel.
                    log.error(
                        "result %s not published (%s); its request will be redelivered",
                        result.request_id,
                        outcome,
                        extra={"request_id": result.request_id},
                    )
                    continue
                published.append(delivery)
                log.debug(
                    "result %s published to %r",
                    result.status,
                    message.queue,
                    extra={
                        "request_id": result.request_id,
                        "project_id": result.project_id,
                        "job_id": ",".join(j.job_id for j in result.jobs) or None,
                    },
                )
            self.stats.results_published += len(published)
            if settle == "dead-letter":
                self.stats.dead_lettered += len(published)
            session.settle(published, settle)

    def _result_message(self, delivery: Delivery, result: SnapshotResult) -> Message:
        queue = delivery.reply_to or (
            self.settings.result_queue if result.status == "accepted" else self.settings.error_queue
        )
        return Message(
            result.model_dump_json().encode(),
            queue,
            correlation_id=result.correlation_id,
            headers={"x-snapworker-status": result.status},
        )

    def _detour(self, message: Message) -> Message:
        log.warning("reply_to queue %r does not exist: its result goes to %r", message.queue, self.settings.error_queue)
        headers = {**(message.headers or {}), "x-snapworker-undeliverable-reply-to": message.queue}
        return Message(message.body, self.settings.error_queue, correlation_id=message.correlation_id, headers=headers)

    # -- helpers
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
