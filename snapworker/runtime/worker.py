"""The worker: wiring only. Deliveries -> batching core -> API -> results -> acks, over broker sessions.

Each job lives in a module of its own: reading messages (:mod:`.intake`), widening the prefetch window
(:mod:`.widening`), turning ready keys into granted calls (:mod:`.sender`), one batch's calls (:mod:`.calls`),
a batch's outcome to published results and acks (:mod:`.outcomes`), broker sessions and the drain
(:mod:`.sessions`), tasks that own deliveries (:mod:`.tasks`). This module builds them, starts the background
loops under one :class:`~.supervisor.Supervisor`, and closes everything in order through one
``AsyncExitStack``. Delivery is at least once: see docs/design.md, "Delivery guarantee".
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from snapworker.cloud.limiter import Limiter, RateLimiter
from snapworker.core import BatchingCore, WindowPolicy
from snapworker.core.lifecycle import Lifecycle
from snapworker.failpoints import configure as configure_failpoints
from snapworker.idempotency import Idempotency, build_idempotency
from snapworker.idempotency.reconcile import Reconciler
from snapworker.ops.progress import ProgressReporter
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.call_parts import SnapshotApi
from snapworker.runtime.calls import BatchCaller
from snapworker.runtime.credential_pause import CredentialPause
from snapworker.runtime.guard import DeliveryGuard
from snapworker.runtime.intake import Intake
from snapworker.runtime.outcomes import Outcomes
from snapworker.runtime.results import ResultPublisher
from snapworker.runtime.sender import Sender
from snapworker.runtime.sessions import Sessions
from snapworker.runtime.supervisor import Supervisor
from snapworker.runtime.tasks import WorkerTasks
from snapworker.runtime.widening import WindowWidener
from snapworker.settings import Settings, redact_url

if TYPE_CHECKING:
    from snapworker.ops.metrics import ApiMetrics
    from snapworker.tracking.loop import Tracker

__all__ = ["Worker"]

log = logging.getLogger("snapworker.worker")


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
        window = WindowPolicy(
            floor=settings.prefetch,
            ceiling=settings.prefetch_max,
            max_batch=settings.max_batch,
            desktops_per_s=settings.rate_limit * settings.max_batch,
            # half the deadline: room for the rate to be cut by throttling and for retries
            budget_s=settings.request_deadline_s / 2,
        )
        self._limiter: Limiter | None = None
        self._loops: Supervisor | None = None
        self._wake = asyncio.Event()  # the sender should look at the core again
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self.consuming = asyncio.Event()
        self._results = ResultPublisher(settings, self.stats)
        # every delivery's state and owner, sans I/O: the one place orphans are found and settled
        self._life = Lifecycle()
        # the API refuses the credential: the worker pauses (consumes nothing, sends nothing) until it works again
        self._credentials = CredentialPause()
        self._tasks = WorkerTasks(
            lambda deliveries, exc: self._guard.fail(deliveries, exc, doing="a worker task"), self._life
        )
        self._guard = DeliveryGuard(self.stats, self._results, self._tasks.spawn)
        widener = WindowWidener(self._core, window, self._tasks, lambda: self._sessions.current)
        self._outcomes = Outcomes(
            self._core, self.stats, self._results, self._guard, self._tasks, widener, self._life, wake=self._wake
        )
        self._intake = Intake(
            settings,
            self._core,
            self.stats,
            self._results,
            self._guard,
            self._tasks,
            self._outcomes,
            widener,
            self._life,
            wake=self._wake,
            stopping=self._stopping,
        )
        # None when IDEMPOTENCY_STORE=off: then at least once only (see docs/design.md, "Idempotency")
        self._idem: Idempotency | None = build_idempotency(
            settings,
            self._core,
            submit=self._intake.submit,
            answer=self._intake.answer_from_record,
            spawn=self._tasks.spawn,
            fail=lambda deliveries, exc, doing: self._guard.fail(deliveries, exc, doing=doing),
        )
        self._intake.idempotency = self._outcomes.idempotency = self._idem
        self._sessions = Sessions(
            settings,
            self._core,
            self._intake,
            self._tasks,
            self._idem,
            self._life,
            wake=self._wake,
            stopping=self._stopping,
            consuming=self.consuming,
            credentials=self._credentials,
        )

    # -- public lifecycle
    async def run(self) -> None:
        """Serve until closed. Reconnects with backoff whenever the session is lost or cannot consume."""
        self._stopped.clear()
        configure_failpoints(self.settings.failpoints)
        try:
            async with AsyncExitStack() as stack:
                # closed in the reverse order: the background loops last, the store just before them
                loops = self._loops = Supervisor()
                stack.push_async_callback(loops.close)
                if self._idem is not None:
                    stack.push_async_callback(self._idem.close)
                observer = await self._serve_health(stack)
                api = self._api = await self._open_api(stack, observer, loops)
                self._limiter = api.limiter
                loops.start("credential probe", self._credentials.run)
                stack.push_async_callback(loops.stop, "credential probe")
                await self._verify_credentials(api)
                # one reconciler for the calls (lost answers) and the gate (redeliveries): their listings share it
                reconciler = Reconciler.for_api(api)
                stack.push_async_callback(reconciler.close)
                if self._idem is not None:
                    self._idem.use_reconciler(reconciler)
                self._start_sender(loops, api, reconciler)
                stack.push_async_callback(loops.stop, "send loop")
                if self.settings.progress_interval_s > 0:
                    interval = self.settings.progress_interval_s
                    reporter = ProgressReporter(self.stats, self._core, lambda: self._limiter, interval_s=interval)
                    loops.start("progress reporter", reporter.run)
                    stack.push_async_callback(loops.stop, "progress reporter")
                self._start_tracking(stack, loops, api)
                log.info(
                    "snapworker starting: broker %s, API %s (auth: %s), request queue %r",
                    redact_url(self.settings.amqp_url.get_secret_value()),
                    self.settings.api_url,
                    self.settings.auth_mode,
                    self.settings.request_queue,
                )
                await self._sessions.serve()
        finally:
            if self._sessions.served:  # a start that failed has nothing to total
                # one line of totals, for operators and the benchmark: a field of its own in the JSON format
                log.info("worker totals", extra={"totals": self.stats.as_dict()})
            self._stopped.set()

    async def close(self) -> None:
        """Stop consuming, drain within SHUTDOWN_TIMEOUT_S, requeue the rest; returns when ``run`` has ended."""
        if self._sessions.shutdown_deadline is None:
            deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout_s
            self._sessions.shutdown_deadline = deadline
        self._stopping.set()
        if self._limiter is not None:
            await self._stopped.wait()

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

    @property
    def tracker(self) -> Tracker | None:
        """The job tracker (read-only use: metrics); None when TRACK_JOBS is off, and until ``run`` starts it."""
        return self._outcomes.tracker

    def problems(self) -> dict[str, str]:
        """What keeps the worker from serving now, with why (empty when nothing does): a background loop down, or
        the API refusing the credential. A worker with any is not ready."""
        problems = {} if self._loops is None else self._loops.problems()
        if (refused := self._credentials.reason) is not None:
            problems["credential"] = refused
        return problems

    def ready(self) -> bool:
        """Connected and consuming: the consumer is attached to an open channel; the idempotency store, if any,
        answers (while it does not, requests are held, not served); and every background loop runs."""
        session = self._sessions.current
        store_up = self._idem is None or self._idem.available
        consuming = self.consuming.is_set() and session is not None and session.consumer_attached()
        return consuming and store_up and not self.problems()

    # -- wiring
    async def _serve_health(self, stack: AsyncExitStack) -> ApiMetrics | None:
        """Metrics and health endpoints, if METRICS_PORT is set; the API observer they read."""
        if self.settings.metrics_port is None:
            return None
        # imported here: prometheus-client and aiohttp.web cost start-up time a worker without metrics saves
        from snapworker.ops.health import HealthServer
        from snapworker.ops.metrics import build_registry

        registry, observer = build_registry(self)
        health = HealthServer(
            registry,
            self.ready,
            host=self.settings.metrics_host,
            port=self.settings.metrics_port,
            problems=self.problems,
        )
        await health.start()
        stack.push_async_callback(health.stop)
        log.info("metrics and health on port %d: /metrics /healthz /readyz", health.port)
        return observer

    async def _open_api(self, stack: AsyncExitStack, observer: ApiMetrics | None, loops: Supervisor) -> SnapshotApi:
        """The API given to the worker, else the Workspace API (see :func:`.api_edge.open_api`)."""
        if self._api is not None:
            return self._api
        from snapworker.runtime.api_edge import open_api

        return open_api(self.settings, stack, observer=observer, loops=loops, credential_watch=self._credentials)

    def _share_rate(self, workers: int) -> None:
        # Without Redis no budget is shared: the routing workers (the fleet, as the request queue's consumers
        # count it) each take 1/N of RATE_LIMIT, so a fleet started with one environment is not throttled.
        if self.settings.redis_url is None and isinstance(self._limiter, RateLimiter):
            self._limiter.share(workers)

    async def _verify_credentials(self, api: SnapshotApi) -> None:
        """One cheap read per credential before consuming (see :mod:`.credential_pause`): a refused one pauses
        the worker at once, with its ERROR line, instead of failing the first requests."""
        from snapworker.cloud.probe import verify_at_start

        await verify_at_start(api, self.settings)

    def _start_sender(self, loops: Supervisor, api: SnapshotApi, reconciler: Reconciler) -> None:
        s = self.settings
        journal = self._idem.journal if self._idem is not None else None
        caller = BatchCaller(
            api,
            max_extra_calls=s.isolate_max_extra_calls,
            max_tries=s.retry_max_tries,
            busy_retry_max_s=s.retry_max_time_s,  # busy desktops: tried again this long at most
            journal=journal,
            reconciler=reconciler,
            reconcile_delay_s=s.reconcile_delay_s,
        )
        sender = Sender(
            self._core,
            api.limiter,
            caller,
            wake=self._wake,
            deadline_s=s.request_deadline_s,
            spawn=self._tasks.spawn,
            on_cut=self._outcomes.on_cut,
            on_outcome=self._outcomes.on_outcome,
            renew=journal.renew if journal is not None else None,
            may_send=self._credentials.serving,
        )
        loops.start("send loop", sender.run)
        self._sessions.sender = sender
        self._sessions.share_rate = self._share_rate
        self._sessions.stop_sending = lambda: loops.stop("send loop")

    def _start_tracking(self, stack: AsyncExitStack, loops: Supervisor, api: SnapshotApi) -> None:
        from snapworker.runtime.tracking_run import TrackingRun
        from snapworker.tracking import tracker_for

        tracker = self._outcomes.tracker = tracker_for(self.settings, api)
        if tracker is not None:
            TrackingRun(tracker, self._sessions, consuming=self.consuming, stopping=self._stopping).start(loops, stack)
