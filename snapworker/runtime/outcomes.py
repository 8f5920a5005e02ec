"""Outcomes: a batch's outcome becomes the results of the requests it finished, published, then acked.

From the moment the core hands over the finished requests, only this code holds them: whatever raises here, the
guard answers them (``failed``, dead-lettered), never strands them. Tracking the results' jobs never keeps a
result from going out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from snapworker.amqp.session import Delivery
from snapworker.contract.models import SnapshotResult
from snapworker.core import Batch, BatchingCore, Outcome
from snapworker.core.lifecycle import Lifecycle, State
from snapworker.idempotency import Idempotency
from snapworker.ops.progress import log_problem_result
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.guard import DeliveryGuard
from snapworker.runtime.results import ResultPublisher
from snapworker.runtime.tasks import WorkerTasks
from snapworker.runtime.widening import WindowWidener

if TYPE_CHECKING:
    from snapworker.tracking.loop import Tracker

__all__ = ["Outcomes"]

log = logging.getLogger("snapworker.worker")


class Outcomes:
    """``wake``: set once a batch is finished (a full window may then go as it is). ``idempotency`` and
    ``tracker`` are set by the worker when it has them."""

    def __init__(
        self,
        core: BatchingCore,
        stats: WorkerStats,
        results: ResultPublisher,
        guard: DeliveryGuard,
        tasks: WorkerTasks,
        widener: WindowWidener,
        lifecycle: Lifecycle,
        *,
        wake: asyncio.Event,
    ) -> None:
        self._core = core
        self._stats = stats
        self._results = results
        self._guard = guard
        self._tasks = tasks
        self._widener = widener
        self._life = lifecycle
        self._wake = wake
        self.idempotency: Idempotency | None = None
        self.tracker: Tracker | None = None

    def on_cut(self, batch: Batch) -> None:
        """A batch was cut (its call granted)."""
        self._stats.count_batch(batch)
        owner = ("call", batch.id)
        for ticket in self._core.waiting(batch):
            self._life.move(ticket, State.IN_CALL, owner=owner)
        self._tasks.progress.set()
        self._widener.maybe_widen()

    async def on_outcome(self, batch: Batch, outcome: Outcome) -> None:
        """Finish the batch in the core; publish and ack the requests it finished. Never raises."""
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
        answered: list[tuple[Delivery, SnapshotResult]] = []
        try:
            for finished in finished_requests:
                assert isinstance(finished.ticket, Delivery)
                self._life.move(finished.ticket, State.ANSWERED, owner=("call", batch.id))
                result = finished.result
                if self.idempotency is not None:
                    result = self.idempotency.finish(finished.ticket, result)
                log_problem_result(result)
                self._stats.count_result(result)
                answered.append((finished.ticket, result))
            if answered:
                await self.answer(answered)
        except Exception as exc:  # after the core forgot them, only this task holds them: never strand them
            tickets = [f.ticket for f in finished_requests if isinstance(f.ticket, Delivery)]
            self._guard.fail(tickets, exc, doing=f"answering batch {batch.id}")

    async def answer(self, answered: list[tuple[Delivery, SnapshotResult]]) -> None:
        """Start tracking the results' jobs, then publish them and ack their requests. Tracking never keeps a
        result from going out: a tracker that fails only costs those requests their completion."""
        if self.tracker is not None:
            try:
                await self.tracker.start([(result, delivery.reply_to) for delivery, result in answered])
            except Exception:
                log.exception("tracking the jobs of %d results failed: they go out without completions", len(answered))
        await self._results.publish(answered, settle="ack")
