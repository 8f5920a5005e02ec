"""Intake: each delivery read, answered at once if invalid, looked up if keyed, else held by the batching core.

Whatever goes wrong while a message is read or held, the guard answers it (``failed``, dead-lettered): a bug
never leaves a message held, nor stops the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from snapworker.amqp.session import Delivery
from snapworker.contract.intake import Accepted, Rejected, read_request
from snapworker.contract.models import SnapshotResult
from snapworker.contract.priority import is_urgent
from snapworker.core import BatchingCore
from snapworker.core.lifecycle import Lifecycle, State
from snapworker.idempotency import Idempotency
from snapworker.ops.progress import log_problem_result
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.guard import DeliveryGuard
from snapworker.runtime.outcomes import Outcomes
from snapworker.runtime.results import ResultPublisher
from snapworker.runtime.tasks import WorkerTasks
from snapworker.runtime.widening import WindowWidener
from snapworker.settings import Settings

__all__ = ["Intake"]

log = logging.getLogger("snapworker.worker")


class Intake:
    """``wake``: set when the core has something new for the sender; ``stopping``: set once the worker drains
    (a delivery that comes then is left to the drain, which requeues it). ``idempotency`` is set by the worker
    once built (it needs this intake's ``submit`` and ``answer_from_record``)."""

    def __init__(
        self,
        settings: Settings,
        core: BatchingCore,
        stats: WorkerStats,
        results: ResultPublisher,
        guard: DeliveryGuard,
        tasks: WorkerTasks,
        outcomes: Outcomes,
        widener: WindowWidener,
        lifecycle: Lifecycle,
        *,
        wake: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._core = core
        self._stats = stats
        self._results = results
        self._guard = guard
        self._tasks = tasks
        self._outcomes = outcomes
        self._widener = widener
        self._life = lifecycle
        self._wake = wake
        self._stopping = stopping
        self.idempotency: Idempotency | None = None

    def on_delivery(self, delivery: Delivery) -> None:
        """The consumer's callback: never raises."""
        if self._stopping.is_set():
            return  # delivered while stopping: the drain requeues it
        self._life.receive(delivery, delivery.session, owner="intake")
        try:
            self._take(delivery)
        except Exception as exc:  # last resort: a bug must not leave the message held, nor stop the consumer
            # forget what the core took of it, or a batch outcome would answer it a second time
            with contextlib.suppress(Exception):
                self._core.drop([delivery])
            self._guard.fail([delivery], exc, doing="reading and holding a request")

    def _take(self, delivery: Delivery) -> None:
        self._stats.requests_received += 1
        read = read_request(delivery.envelope, max_bytes=self._settings.max_message_bytes, now=datetime.now(UTC))
        if isinstance(read, Rejected):
            log_problem_result(read.result)
            self._stats.count_result(read.result)
            self._life.move(delivery, State.ANSWERED, owner="intake")
            self._tasks.spawn(self._results.publish([(delivery, read.result)], settle="dead-letter"), (delivery,))
            return
        if self.idempotency is not None:
            self._life.move(delivery, State.LOOKED_UP, owner="gate")
            if self.idempotency.admit(delivery, read):
                return  # looked up first: answered from its record, or submitted once known to need a call
        self.submit(delivery, read)

    def submit(self, delivery: Delivery, read: Accepted) -> None:
        """Hand a valid request to the batching core."""
        loop = asyncio.get_running_loop()
        envelope = delivery.envelope
        # urgent when it came from an urgent queue, or its body or AMQP priority says so (contract/priority.py)
        urgent = envelope.from_urgent_queue or is_urgent(read.request.priority, envelope.priority)
        try:
            self._life.move(delivery, State.BATCHED, owner="core")
            now = loop.time()
            if urgent:
                self._stats.urgent.arrived(delivery, now)
            if self._core.submit(delivery, read.request, read.request_id, read.correlation_id, now, urgent=urgent):
                self._wake.set()
        except Exception as exc:  # as in on_delivery: a bug must not leave the message held
            with contextlib.suppress(Exception):
                self._core.drop([delivery])
            self._guard.fail([delivery], exc, doing="holding a request")
            return
        self._widener.maybe_widen()

    def answer_from_record(self, delivery: Delivery, result: SnapshotResult) -> None:
        """A request answered from its idempotency record: published (and acked) without a call. Its jobs are
        tracked again: the first answer may never have gone out (a worker killed between recording the outcome
        and publishing it), and a job followed twice only means its completion may come twice (at least once,
        as results do)."""
        log_problem_result(result)
        self._stats.count_result(result)
        self._life.move(delivery, State.ANSWERED, owner="outcomes")
        self._tasks.spawn(self._outcomes.answer([(delivery, result)]), (delivery,))
