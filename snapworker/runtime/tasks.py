"""The worker's tasks that own deliveries: each carries the messages it handles, and is tracked until it ends.

A task that handles messages (a lookup, a reconciliation, a publish) is spawned *with* them: the request
lifecycle (:mod:`snapworker.core.lifecycle`) hands them to it. If it raises or is cancelled while it still owns
some, they are orphans, and one sweep settles them: requeued when the cause is transient (a cancellation), else
answered failed and dead-lettered by the guard (``fail``); never left held until the session dies. The drain
waits on :attr:`WorkerTasks.progress` (set whenever one ends) and cancels what is left at its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from snapworker.amqp.session import Delivery
from snapworker.core.lifecycle import Lifecycle

__all__ = ["WorkerTasks"]

Fail = Callable[[Sequence[Delivery], BaseException], None]


class WorkerTasks:
    """``fail(deliveries, exc)``: what to do with the orphans of a task that raised (the worker's guard)."""

    def __init__(self, fail: Fail, lifecycle: Lifecycle | None = None) -> None:
        self._fail = fail
        self._life = lifecycle if lifecycle is not None else Lifecycle()
        self._tasks: set[asyncio.Task[None]] = set()
        self.progress = asyncio.Event()  # a task ended (or a batch was cut): what the drain waits on

    def spawn(self, coro: Coroutine[Any, Any, None], deliveries: Sequence[Delivery] = ()) -> None:
        """Run ``coro`` as a tracked task that owns ``deliveries``."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        for delivery in deliveries:
            self._life.hand(delivery, task)
        task.add_done_callback(lambda done: self._done(done, deliveries))

    def _done(self, task: asyncio.Task[None], deliveries: Sequence[Delivery]) -> None:
        self._tasks.discard(task)
        self.progress.set()
        # Those the lifecycle does not know (settled, returned, or never received through intake) are the
        # task's still: the guard leaves alone any already settled or of a lost session.
        untracked = [d for d in deliveries if self._life.state(d) is None]
        if task.cancelled():
            self._life.release(task, deliveries, "cancelled", transient=True)
        elif (exc := task.exception()) is not None:
            self._life.release(task, deliveries, repr(exc), transient=False)
            # A delivery passed on before the task raised is not its any more. The guard names the exception
            # (with its traceback) in the log and in the failed result.
            orphans = [o.ticket for o in self._life.sweep() if isinstance(o.ticket, Delivery)]
            self._fail([*orphans, *untracked], exc)
            return
        else:
            return
        for orphan in self._life.sweep():  # cancelled: what it held goes back to the queue
            delivery = orphan.ticket
            if isinstance(delivery, Delivery) and not delivery.session.lost.is_set():
                delivery.session.settle([delivery], "requeue")

    def __iter__(self) -> Iterator[asyncio.Task[None]]:
        return iter(list(self._tasks))

    @property
    def busy(self) -> bool:
        """Some task has not ended."""
        return any(not t.done() for t in self._tasks)

    async def settle_within(self, timeout_s: float) -> None:
        """Let the running tasks end within ``timeout_s``, then cancel the rest and wait for them."""
        pending = {t for t in self._tasks if not t.done()}
        if pending and timeout_s > 0:
            await asyncio.wait(pending, timeout=timeout_s)
        pending = {t for t in self._tasks if not t.done()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
