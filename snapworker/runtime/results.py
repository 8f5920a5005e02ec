"""Publishing results: one group per finished batch, detours for missing reply queues, then settling.

A result is published persistent and mandatory and confirmed by the broker before its request is settled, so a
request is never acked without its result (at least once). Results whose session is gone are skipped: their
requests return to the queue with the dead channel.
"""

from __future__ import annotations

import asyncio
import logging

from snapworker.amqp.session import AmqpSession, Delivery, Message, Settle
from snapworker.contract.models import SnapshotResult
from snapworker.contract.result_size import encode_result
from snapworker.errors import UnroutableResult
from snapworker.ops.stats import WorkerStats
from snapworker.settings import Settings

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

        ``settle="dead-letter"``: each message then goes to the dead-letter queue with its result's first error
        as the reason. Never raises: a result that cannot be published while the session lives (too large, a
        bug, refused by the broker) sends its message to the dead-letter queue with the reason instead, and is
        counted under ``unpublishable``; one not published because the session was lost is redelivered.

        A batch's results go out together (one write, confirms awaited together); PUBLISH_GROUPS bounds how
        many groups wait for confirms at once, because aiormq's confirm handling slows down with thousands
        of publishes outstanding.
        """
        by_session: dict[AmqpSession, list[tuple[Delivery, SnapshotResult]]] = {}
        for delivery, result in answered:
            if not delivery.session.lost.is_set():
                by_session.setdefault(delivery.session, []).append((delivery, result))
        for session, items in by_session.items():
            outcomes: list[BaseException | None] = []
            messages: list[Message | None] = []
            for delivery, result in items:
                try:
                    messages.append(self._result_message(delivery, result))
                    outcomes.append(None)
                except Exception as exc:  # e.g. ResultTooLarge: no result, but the message is still settled
                    messages.append(None)
                    outcomes.append(exc)
            ready = [i for i, m in enumerate(messages) if m is not None]
            async with self._slots:
                sent = await _publish(session, [m for m in messages if m is not None])
            for i, outcome in zip(ready, sent, strict=True):
                outcomes[i] = outcome
            # a reply_to queue that does not exist: the result goes to the error queue instead, never dropped
            detours = [
                i
                for i, (message, outcome) in enumerate(zip(messages, outcomes, strict=True))
                if isinstance(outcome, UnroutableResult)
                and message is not None
                and message.queue != self._settings.error_queue
            ]
            if detours:
                rerouted = [self._detour(m) for i in detours if (m := messages[i]) is not None]
                for i, detour, outcome in zip(detours, rerouted, await _publish(session, rerouted), strict=True):
                    outcomes[i], messages[i] = outcome, detour
            published: list[tuple[Delivery, SnapshotResult]] = []
            refused: list[tuple[Delivery, str]] = []
            for (delivery, result), message, outcome in zip(items, messages, outcomes, strict=True):
                if outcome is not None:
                    self._not_published(session, delivery, result, outcome, refused)
                    continue
                published.append((delivery, result))
                log.debug(
                    "result %s published to %r",
                    result.status,
                    message.queue if message is not None else None,
                    extra={
                        "request_id": result.request_id,
                        "project_id": result.project_id,
                        "job_id": ",".join(j.job_id for j in result.jobs) or None,
                    },
                )
            self._stats.results_published += len(published)
            if settle == "dead-letter":
                self._stats.dead_lettered += await session.dead_letter([(d, _reason(r)) for d, r in published])
            else:
                session.settle([d for d, _ in published], settle)
            if self._stats.urgent.timing:  # only while urgent requests are held
                self._stats.urgent.answered((d for d, _ in published), asyncio.get_running_loop().time())
            if refused:
                self._stats.failures_by_reason["unpublishable"] += len(refused)
                self._stats.dead_lettered += await session.dead_letter(refused)

    def _not_published(
        self,
        session: AmqpSession,
        delivery: Delivery,
        result: SnapshotResult,
        outcome: BaseException,
        refused: list[tuple[Delivery, str]],
    ) -> None:
        if session.lost.is_set():
            # Not confirmed and the channel is gone: the message returns to the queue with it.
            log.error(
                "result %s not published (%s); its request will be redelivered",
                result.request_id,
                outcome,
                extra={"request_id": result.request_id},
            )
            return
        # The session lives, so this result would fail again: answered by the dead-letter queue instead of
        # being held (or redelivered) forever.
        log.error(
            "result %s cannot be published (%r); its request goes to the dead-letter queue",
            result.request_id,
            outcome,
            extra={"request_id": result.request_id},
        )
        refused.append((delivery, f"result not published: {outcome!r}"))

    def _result_message(self, delivery: Delivery, result: SnapshotResult) -> Message:
        queue = delivery.reply_to or (
            self._settings.result_queue if result.status == "accepted" else self._settings.error_queue
        )
        sent, body = encode_result(result)
        if sent.truncated:
            self._stats.results_truncated += 1
            log.warning(
                "result %s cut to %d bytes to fit the size limit",
                result.request_id,
                len(body),
                extra={"request_id": result.request_id},
            )
        return Message(
            body,
            queue,
            correlation_id=result.correlation_id,
            headers={"x-snapworker-status": result.status},
        )

    def _detour(self, message: Message) -> Message:
        error_queue = self._settings.error_queue
        log.warning("reply_to queue %r does not exist: its result goes to %r", message.queue, error_queue)
        headers = {**(message.headers or {}), "x-snapworker-undeliverable-reply-to": message.queue}
        return Message(message.body, error_queue, correlation_id=message.correlation_id, headers=headers)


async def _publish(session: AmqpSession, messages: list[Message]) -> list[BaseException | None]:
    """``session.publish_many``, with any exception it raises (a bug, an oversized body) as every outcome.

    A group that raised is published again one message at a time, so one bad message fails only itself.
    """
    if not messages:
        return []
    try:
        return list(await session.publish_many(messages))
    except Exception as exc:
        if len(messages) == 1:
            return [exc]
    return [outcome for message in messages for outcome in await _publish(session, [message])]


def _reason(result: SnapshotResult) -> str:
    """Why a message answered with ``result`` is dead-lettered: its first error, code and message."""
    if not result.errors:
        return result.status
    error = result.errors[0]
    return f"{error.error_code}: {error.error_msg}"
