"""The Sender (Kafka's name for it): turns the batching core's ready keys into API calls, one granted call at a time.

It asks the rate limiter for a call only when the core has something to send, and has the core cut the batch
only once the call is granted (late binding): every desktop that arrived meanwhile rides on that call. Between
calls it sleeps until the core's next deadline, or until ``wake`` is set (a delivery opened or filled a key, an
answer freed the window, the worker is draining). It never polls.

Each call carries its batch's lease (:class:`~snapworker.runtime.batch_lease.BatchLease`): the worker lapses
the leases of batches nobody waits for once a broker session is lost (:meth:`Sender.lapse_orphans`), and
all of them when it stops (:meth:`Sender.lapse_all`), so that no call sends a try after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from snapworker.cloud.limiter import Grant, Limiter
from snapworker.core import Batch, BatchingCore, Outcome
from snapworker.runtime.batch_lease import BatchLease
from snapworker.runtime.call_parts import internal_error
from snapworker.runtime.calls import BatchCaller

__all__ = ["Sender"]

log = logging.getLogger("snapworker.worker")

#: the limiter's queue name for new batches (retries of a call queue under their project)
_BATCHES = "batches"


class Sender:
    """``await sender.run()`` sends batches until cancelled. ``on_cut`` sees each batch as it is cut;
    ``on_outcome`` gets each batch's outcome (never an exception: a bug becomes a retryable error entry).
    ``may_send``: when given, no batch is cut while it is clear (the API refuses the worker's credential)."""

    def __init__(
        self,
        core: BatchingCore,
        limiter: Limiter,
        caller: BatchCaller,
        *,
        wake: asyncio.Event,
        deadline_s: float,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        on_cut: Callable[[Batch], None],
        on_outcome: Callable[[Batch, Outcome], Awaitable[None]],
        renew: Callable[[Batch], Awaitable[bool]] | None = None,
        may_send: asyncio.Event | None = None,
    ) -> None:
        self._core = core
        self._limiter = limiter
        self._caller = caller
        self._wake = wake
        self._deadline_s = deadline_s
        self._spawn = spawn
        self._on_cut = on_cut
        self._on_outcome = on_outcome
        self._renew = renew
        self._may_send = may_send
        self._leases: dict[int, BatchLease] = {}  # batch id -> the lease of its call in flight

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._may_send is not None:
                await self._may_send.wait()
            await self._until_sendable()
            grant = await self._limiter.acquire(_BATCHES)
            if self._may_send is not None and not self._may_send.is_set():
                self._limiter.release()  # paused meanwhile (the credential was refused): no call goes now
                continue
            # While the call was awaited the core may have changed its mind (a batch it was about to release
            # started filling again). The token is spent either way: keep the grant until a batch may go,
            # rather than waste it.
            while (batch := self._core.take(loop.time())) is None and self._core.buffered_desktops:
                await self._until_sendable()
            if batch is None:  # what was pending left with a lost session meanwhile
                self._limiter.release()
                continue
            lease = self._leases[batch.id] = BatchLease(batch, self._core, self._renew)
            self._spawn(self._call(batch, grant, lease))
            self._on_cut(batch)

    def lapse_orphans(self) -> int:
        """Lapse the lease of every call whose batch nobody waits for any more; how many lapsed."""
        return sum(lease.lapse_if_orphaned() for lease in list(self._leases.values()))

    def lapse_all(self) -> None:
        """Lapse every call's lease: none sends another try (the worker is stopping)."""
        for lease in list(self._leases.values()):
            lease.lapse()

    async def _until_sendable(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before looking: a wake-up while we look is not lost
            now = loop.time()
            if self._core.sendable(now):
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._core.next_deadline(now)):
                    await self._wake.wait()

    async def _call(self, batch: Batch, grant: Grant, lease: BatchLease) -> None:
        try:
            # the deadline of the batch's oldest request (both on the loop's monotonic clock)
            deadline = batch.opened_at + self._deadline_s
            outcome = await self._caller.send(batch, grant=grant, deadline=deadline, lease=lease)
        except Exception as exc:  # the caller never raises; a bug in it must not leave requests without a result
            log.exception("sending batch %d failed unexpectedly", batch.id)
            outcome = (internal_error(batch.desktop_ids, exc),)
        finally:
            self._leases.pop(batch.id, None)
        await self._on_outcome(batch, outcome)
