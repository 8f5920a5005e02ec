"""The last resort for every delivery: whatever goes wrong with one message, it ends answered or dead-lettered.

The normal paths settle every message: a valid request is acked after its result is confirmed, an invalid one is
answered and dead-lettered, a result that cannot be published sends its message to the dead-letter queue with the
reason (results.py). The guard is for what they did not foresee: an exception while a message is read or held, or
a task that handles messages failing. Such a message gets a ``failed`` result (``SNAPWORKER.INTERNAL``) if one
can be published, then goes to the dead-letter queue with the reason in ``x-snapworker-reason``, and is counted
under ``snapworker_delivery_failures_total{reason="internal"}``. It is never left held, and never requeued: a
bug that failed a message once would fail it again, forever on a classic queue.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime
from typing import Any

from snapworker.amqp.session import REASON_MAX_CHARS, Delivery
from snapworker.contract.models import ResultError, SnapshotRequest, SnapshotResult
from snapworker.ops.stats import WorkerStats
from snapworker.runtime.results import ResultPublisher

__all__ = ["INTERNAL_ERROR_CODE", "DeliveryGuard", "failed_result"]

log = logging.getLogger("snapworker.guard")

#: ``error_code`` of a request the worker failed on by a fault of its own (also used when sending a batch fails).
INTERNAL_ERROR_CODE = "SNAPWORKER.INTERNAL"


class DeliveryGuard:
    """Settles messages whose handling raised. ``spawn`` runs the settling in a task the worker tracks."""

    def __init__(
        self,
        stats: WorkerStats,
        results: ResultPublisher,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self._stats = stats
        self._results = results
        self._spawn = spawn

    def fail(self, deliveries: Iterable[Delivery], exc: BaseException, *, doing: str) -> None:
        """``exc`` was raised while ``doing`` something with ``deliveries``: answer them ``failed``, dead-letter them.

        Never raises. Deliveries already settled are left alone, and so are those of a lost session (the broker
        has them back already).
        """
        pending = [d for d in deliveries if not d.settled and not d.session.lost.is_set()]
        log.error(
            "%s failed unexpectedly; %d message(s) answered failed and dead-lettered",
            doing,
            len(pending),
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if not pending:
            return
        self._stats.failures_by_reason["internal"] += len(pending)
        reason = f"internal error while {doing}: {exc!r}"[:REASON_MAX_CHARS]
        answered = [(d, failed_result(d, reason)) for d in pending]
        for _, result in answered:
            self._stats.count_result(result)
        self._spawn(self._settle(answered))

    async def _settle(self, answered: list[tuple[Delivery, SnapshotResult]]) -> None:
        try:
            await self._results.publish(answered, settle="dead-letter")
        except Exception:
            # Even the dead-letter path broke: the queue's own dead-lettering still takes them, without a reason.
            log.exception("dead-lettering %d failed message(s) failed; rejecting them instead", len(answered))
            for delivery, _ in answered:
                delivery.session.settle([delivery], "dead-letter")


def failed_result(delivery: Delivery, reason: str) -> SnapshotResult:
    """A ``failed`` result for a message the worker could not handle, naming what it can read of the request."""
    envelope = delivery.envelope
    try:
        request: SnapshotRequest | None = SnapshotRequest.model_validate_json(envelope.body)
    except Exception:  # unreadable, or the very parsing that failed: the result names nothing then
        request = None
    error = ResultError(
        desktop_ids=request.desktop_ids if request is not None else (),
        http_status=None,
        error_code=INTERNAL_ERROR_CODE,
        error_msg=reason,
        retryable=True,
    )
    return SnapshotResult(
        request_id=(request.request_id if request is not None else None) or envelope.message_id or str(uuid.uuid4()),
        correlation_id=envelope.correlation_id,
        project_id=request.project_id if request is not None else None,
        status="failed",
        finished_at=datetime.now(UTC),
        errors=(error,),
    )
