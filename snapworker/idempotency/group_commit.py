"""Group commit: writes that arrive while one is being flushed go out together in the next flush.

Under load a worker has several calls starting and ending at once, each wanting its intent or outcome rows
durable before it goes on. Flushed one by one, every write is a thread hop, a transaction and a commit; here
the first write starts a flush at once, and every write that arrives meanwhile joins the next one. Light load
pays nothing (a lone write is flushed at once); heavy load pays one flush per round instead of one per write.

Each writer still returns only once *its* rows are flushed, and sees the flush's error if it failed: the
contract of the store's ``record_*`` methods is unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """Gathers items for ``flush`` (an awaitable that makes a list of items durable, raising if it cannot)."""

    def __init__(self, flush: Callable[[list[T]], Awaitable[None]]) -> None:
        self._flush = flush
        self._pending: list[T] = []
        self._next: asyncio.Future[None] | None = None  # resolved when the pending items are flushed
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, items: Sequence[T]) -> None:
        """Return once ``items`` are flushed; raise what their flush raised."""
        if not items:
            return
        self._pending.extend(items)
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        flushed = self._next
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._drain())
        # shield: a writer cancelled while waiting must not cancel the flush the others wait for too
        await asyncio.shield(flushed)

    async def wait_idle(self) -> None:
        """Until every write so far is flushed (or failed): before the store closes."""
        while self._flusher is not None:
            await asyncio.wait({self._flusher})

    async def _drain(self) -> None:
        try:
            while self._pending:
                items, self._pending = self._pending, []
                flushed, self._next = self._next, None
                assert flushed is not None
                try:
                    await self._flush(items)
                except Exception as exc:
                    flushed.set_exception(exc)
                    flushed.exception()  # retrieved here: every writer may have been cancelled meanwhile
                except BaseException:
                    flushed.cancel()
                    raise
                else:
                    flushed.set_result(None)
        finally:
            self._flusher = None
            if self._pending:  # the flusher itself was cancelled: fail what it would have written
                self._pending = []
                if self._next is not None:
                    self._next.cancel()
                    self._next = None
