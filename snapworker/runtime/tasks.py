"""The worker's tasks that own deliveries: each carries the messages it handles, and is tracked until it ends.

A task that handles messages (a batch's call and its answering, a lookup, a publish) is spawned *with* them:
if it raises, the messages it owned are answered failed and dead-lettered by the guard (``fail``), never left
held until the session dies. The drain waits on :attr:`WorkerTasks.progress` (set whenever one ends) and cancels
what is left at its deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from snapworker.amqp.session import Delivery

__all__ = ["WorkerTasks"]

Fail = Callable[[Sequence[Delivery], BaseException], None]


class WorkerTasks:
    """``fail(deliveries, exc)``: what to do with the deliveries of a task that raised (the worker's guard)."""

    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self._tasks: set[asyncio.Task[None]] = set()
        self.progress = asyncio.Event()  # a task ended (or a batch was cut): what the drain waits on

    def spawn(self, coro: Coroutine[Any, Any, None], deliveries: Sequence[Delivery] = ()) -> None:
        """Run ``coro`` as a tracked task that owns ``deliveries``."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._done(done, deliveries))

    def _done(self, task: asyncio.Task[None], deliveries: Sequence[Delivery]) -> None:
        self._tasks.discard(task)
        self.progress.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(deliveries, exc)

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
