"""Publishing results: one group per finished batch, detours for missing reply queues, then settling.

A result is published persistent and mandatory and confirmed by the broker before its request is settled, so a
request is never acked without its result (at least once). Results whose session is gone are skipped: their
requests return to the queue with the dead channel.
"""

from __future__ import annotations

import asyncio
import logging

from snapworker.amqp import AmqpSession, Delivery, Message, Settle
from snapworker.errors import UnroutableResult
from snapworker.models import SnapshotResult
from snapworker.settings import Settings
from snapworker.stats import WorkerStats

__all__ = ["ResultPublisher"]

log = logging.getLogger("snapworker.results")

# groups of results waiting for confirms at once (a group is up to one batch's results)
_PUBLISH_GROUPS = 16


class ResultPublisher:
    """Sends results where the contract says and settles their messages once the broker confirmed them."""

    def __init__(self, settings: Settings, stats: WorkerStats) -> None:
        self._settings = settings
        self._stats = stats
        self._slots = asyncio.Semaphore(_PUBLISH_GROUPS)

    async def publish(self, answered: list[tuple[Delivery, SnapshotResult]], *, settle: Settle) -> None:
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
            async with self._slots:
                outcomes = await session.publish_many(messages)
            # a reply_to queue that does not exist: the result goes to the error queue instead, never dropped
            detours = [
                i
                for i, outcome in enumerate(outcomes)
                if isinstance(outcome, UnroutableResult) and messages[i].queue != self._settings.error_queue
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
            self._stats.results_published += len(published)
            if settle == "dead-letter":
                self._stats.dead_lettered += len(published)
            session.settle(published, settle)

    def _result_message(self, delivery: Delivery, result: SnapshotResult) -> Message:
        queue = delivery.reply_to or (
            self._settings.result_queue if result.status == "accepted" else self._settings.error_queue
        )
        return Message(
            result.model_dump_json().encode(),
            queue,
            correlation_id=result.correlation_id,
            headers={"x-snapworker-status": result.status},
        )

    def _detour(self, message: Message) -> Message:
        error_queue = self._settings.error_queue
        log.warning("reply_to queue %r does not exist: its result goes to %r", message.queue, error_queue)
        headers = {**(message.headers or {}), "x-snapworker-undeliverable-reply-to": message.queue}
        return Message(message.body, error_queue, correlation_id=message.correlation_id, headers=headers)
