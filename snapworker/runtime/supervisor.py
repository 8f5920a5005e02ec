"""Supervised background loops: one group per worker, each loop restarted with backoff whenever it stops.

A worker's background loops (the sender's send loop, the progress reporter, the tracker, ...) are meant to
run until the worker closes. Started as bare tasks, a loop that raises (a bug) or returns (a bug too: a loop
must not just end) is gone for good and nobody notices: requests pile up unanswered while the worker still
looks ready. Under a :class:`Supervisor`:

* ``start(name, factory)`` runs ``await factory()``; when that returns or raises anything but the
  supervisor's own cancellation, the loop is logged (with its exception) and called again after a backoff:
  ``initial_s``, doubling up to ``max_s``, back to ``initial_s`` once a run lasted ``healthy_s``.
  ``restart=False``: a loop that stops stays down (and is reported as such).
* ``problems()``: name -> reason for every loop that is down now (between its death and its restart, or for
  good), e.g. ``"send loop died: RuntimeError('x'); restarting in 2.0 s"``; empty when all run. What readiness
  and health endpoints look at.
* ``retire(name)``: let one loop end on its own (after its owner told it to stop) without a restart;
  ``stop(name)``: cancel one loop now, without a restart.
* ``close()``: cancel every loop (and pending restart) and wait until they have ended. A cancelled ``close``
  still leaves every loop cancelled; calling it again waits for the rest.

``sleep`` and ``clock`` are injectable (tests move a fake clock instead of sleeping).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["LoopFactory", "Supervisor"]

log = logging.getLogger("snapworker.supervisor")

#: A zero-argument callable returning a fresh coroutine for each run of a loop.
LoopFactory = Callable[[], Coroutine[Any, Any, object]]


@dataclass
class _Loop:
    name: str
    factory: LoopFactory
    restart: bool
    task: asyncio.Task[None] | None = None
    retiring: bool = False
    running: bool = False  # False between a death and the restart: what retire() may call off at once
    problem: str | None = None
    restarts: int = 0


class Supervisor:
    """See the module docstring. Usable as ``async with Supervisor() as supervisor:`` (closed on exit)."""

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        healthy_s: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError("backoff needs 0 < initial_s <= max_s")
        self._initial_s, self._max_s, self._healthy_s = initial_s, max_s, healthy_s
        self._sleep, self._clock = sleep, clock
        self._loops: dict[str, _Loop] = {}
        self._closing = False

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self, name: str, factory: LoopFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as the loop ``name`` (unique among the running ones), supervised until close."""
        if self._closing:
            raise RuntimeError("the supervisor is closed")
        current = self._loops.get(name)
        if current is not None and current.task is not None and not current.task.done():
            raise ValueError(f"a loop named {name!r} is already supervised")
        loop = _Loop(name, factory, restart)
        self._loops[name] = loop
        loop.task = asyncio.get_running_loop().create_task(self._supervise(loop), name=f"supervised:{name}")

    def problems(self) -> dict[str, str]:
        """Every loop down right now, with why; empty when every loop runs (or ended as asked)."""
        return {name: loop.problem for name, loop in self._loops.items() if loop.problem is not None}

    def restarts(self, name: str) -> int:
        """How many times the loop ``name`` was started again (metrics, tests)."""
        return self._loops[name].restarts

    async def retire(self, name: str, within_s: float | None = None) -> None:
        """Wait for the loop ``name`` to end on its own (its owner told it to stop), with no restart; cancel it
        after ``within_s`` s. A pending restart is called off at once."""
        loop = self._loops[name]
        loop.retiring = True
        task = loop.task
        if task is None or task.done():
            loop.problem = None  # down for good already: retired now, no longer a problem
            return
        if not loop.running:
            task.cancel()  # in its backoff: there is nothing to wait for
        _, pending = await asyncio.wait({task}, timeout=within_s)
        if pending:
            log.warning("%s did not end within %.1f s: cancelled", name, within_s or 0.0)
            task.cancel()
            await asyncio.wait({task})
        loop.problem = None

    async def stop(self, name: str) -> None:
        """Cancel the loop ``name`` (or its pending restart) now and wait until it has ended; no restart. For an
        owner that closes before the supervisor does (a limiter's loops end with the limiter)."""
        loop = self._loops[name]
        loop.retiring = True
        if loop.task is not None and not loop.task.done():
            loop.task.cancel()
            await asyncio.wait({loop.task})
        loop.problem = None

    async def close(self) -> None:
        """Cancel every loop and pending restart, and wait until they have all ended."""
        self._closing = True
        tasks = [loop.task for loop in self._loops.values() if loop.task is not None]
        for task in tasks:
            if not task.cancelling():  # a second close must not cut short the cleanup the first one began
                task.cancel()
        if tasks:
            # asyncio.wait, not gather: if close itself is cancelled, the loops stay cancelled and still end
            await asyncio.wait(tasks)

    # -- one loop
    async def _supervise(self, loop: _Loop) -> None:
        delay = self._initial_s
        while True:
            began = self._clock()
            failure: BaseException | None = None
            loop.running = True
            try:
                await loop.factory()
                how = "ended"
            except asyncio.CancelledError:
                if self._cancelled_by_us():
                    raise
                how = "was cancelled from within"  # a cancellation leaked from something it awaited
            except Exception as exc:
                how, failure = f"died: {exc!r}", exc
            finally:
                loop.running = False
            if self._cancelled_by_us() or loop.retiring:
                # It swallowed our cancellation, or was asked to end: not a death, but say if it failed doing so.
                if failure is not None:
                    log.warning("%s failed while ending", loop.name, exc_info=failure)
                loop.problem = None
                return
            if self._clock() - began >= self._healthy_s:
                delay = self._initial_s  # it ran fine for a while: a new failure, not the same one again
            if not loop.restart:
                loop.problem = f"{loop.name} {how}; not restarted"
                log.error("%s", loop.problem, exc_info=failure)
                return
            loop.problem = f"{loop.name} {how}; restarting in {delay:.1f} s"
            log.error("%s", loop.problem, exc_info=failure)
            await self._sleep(delay)
            loop.problem = None
            if loop.retiring:
                return
            delay = min(delay * 2, self._max_s)
            loop.restarts += 1

    @staticmethod
    def _cancelled_by_us() -> bool:
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0
