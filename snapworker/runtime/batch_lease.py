"""A batch's :class:`~snapworker.cloud.lease.CallLease`: its call may send only while someone waits for it.

Who waits is the batching core's to say (the requests a live broker session holds that wait on the batch's
desktops). Once none does (their session was lost, so the broker hands them to another worker, or the worker is
stopping), the lease lapses for good, and the call sends no further try: a throttled try waiting for the
limiter stops waiting at once. With the idempotency journal, a try that comes late renews the batch's intent
first (:meth:`~snapworker.idempotency.journal.CallJournal.renew`): the intent is the lease other workers see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from snapworker.core import Batch, BatchingCore

__all__ = ["BatchLease"]


class BatchLease:
    """``renew``: the journal's renewal of the batch's intent (None without an idempotency store)."""

    def __init__(
        self, batch: Batch, core: BatchingCore, renew: Callable[[Batch], Awaitable[bool]] | None = None
    ) -> None:
        self._batch = batch
        self._core = core
        self._renew = renew
        self.lapsed = asyncio.Event()

    def lapse_if_orphaned(self) -> bool:
        """Lapse if no request waits for the batch any more; whether the lease has lapsed."""
        if not self.lapsed.is_set() and not self._core.waiting(self._batch):
            self.lapsed.set()
        return self.lapsed.is_set()

    def lapse(self) -> None:
        """Lapse now (the worker stops granting calls): no further try is sent."""
        self.lapsed.set()

    async def before_try(self) -> bool:
        if self.lapse_if_orphaned():
            return False
        if self._renew is None:
            return True
        return await self._renew(self._batch)
