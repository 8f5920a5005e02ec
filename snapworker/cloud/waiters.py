"""Calls waiting for a rate limiter's grant: a FIFO queue per project, served round-robin over projects.

Both limiters (the process-local one and the fleet's shared one) hand out grants in this order, so a project
with 50 queued calls delays another project's first call by at most one grant.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["Grant", "Waiters"]


@dataclass(frozen=True, slots=True)
class Grant:
    """Permission for one call. ``granted_at`` (the limiter's clock) goes back in ``on_throttle``."""

    project_id: str
    granted_at: float
    waited_s: float


class Waiters:
    """``add`` a waiter, ``grant`` the next one in round-robin order, ``forget`` one that gave up."""

    def __init__(self) -> None:
        # project -> its waiters (future, since), FIFO; the dict's order is the round-robin order.
        self._queues: OrderedDict[str, deque[tuple[asyncio.Future[Grant], float]]] = OrderedDict()

    def __len__(self) -> int:
        """Waiters still waiting (a cancelled one may linger in its queue until it comes up)."""
        return sum(1 for queue in self._queues.values() for future, _ in queue if not future.done())

    def __bool__(self) -> bool:
        return self._head() is not None

    def add(self, project_id: str, now: float) -> asyncio.Future[Grant]:
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(project_id, deque()).append((future, now))
        return future

    def grant(self, granted_at: float, now: float) -> float | None:
        """Grant the next waiter; the seconds it waited, or None when nobody waits."""
        head = self._head()
        if head is None:
            return None
        project_id, queue = head
        future, since = queue.popleft()
        if queue:
            self._queues.move_to_end(project_id)  # its next call queues behind the other projects
        else:
            del self._queues[project_id]
        future.set_result(Grant(project_id, granted_at, now - since))
        return now - since

    def forget(self, project_id: str, future: asyncio.Future[Grant]) -> None:
        queue = self._queues.get(project_id)
        if queue is None:
            return
        for item in queue:
            if item[0] is future:
                queue.remove(item)
                break
        if not queue:
            del self._queues[project_id]

    def cancel_all(self) -> None:
        for queue in self._queues.values():
            for future, _ in queue:
                future.cancel()
        self._queues.clear()

    def _head(self) -> tuple[str, deque[tuple[asyncio.Future[Grant], float]]] | None:
        """The next project's queue in round-robin order, dropping waiters cancelled but not yet forgotten."""
        while self._queues:
            project_id, queue = next(iter(self._queues.items()))
            while queue and queue[0][0].done():
                queue.popleft()
            if queue:
                return project_id, queue
            del self._queues[project_id]
        return None
