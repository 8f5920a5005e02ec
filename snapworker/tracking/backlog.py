"""Tracking units waiting for the tracking connection: kept in memory, bounded, published once it is ready.

Results never wait for tracking (see :meth:`snapworker.tracking.loop.Tracker.start`): a unit whose first
tracking message cannot be published now is kept here, and the tracker publishes it as soon as its connection
is ready again. The backlog lives in this process only: a worker that dies with units in it loses them (their
requests got their results, but get no completion), as does one that cannot publish them before its
shutdown deadline; both are logged. Bounded: beyond :data:`MAX_UNITS` the oldest unit is dropped, with an
error log, so that a broker down for hours costs bounded memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from snapworker.errors import BrokerError
from snapworker.tracking.state import TrackingUnit

__all__ = ["MAX_UNITS", "Backlog"]

log = logging.getLogger("snapworker.tracking")

#: Units kept at most (one per batch outcome; a unit is a few kB): hours of results of a busy worker.
MAX_UNITS = 10_000
#: Units published at once when catching up: confirms pipelined on one channel, without flooding it.
_ROUND = 100
#: A publish failed on a session still up: try again this much later, not in a tight loop.
_RETRY_S = 1.0

Send = Callable[[TrackingUnit], Awaitable[None]]


class Backlog:
    """Units in the order they came (oldest first). :meth:`keep` never blocks; :meth:`publish` sends them."""

    def __init__(self, max_units: int = MAX_UNITS) -> None:
        if max_units < 1:
            raise ValueError("max_units must be at least 1")
        self._units: deque[TrackingUnit] = deque()
        self._max_units = max_units
        self._added = asyncio.Event()
        self.dropped = 0  # units dropped because the backlog was full: their requests get no completion

    def __len__(self) -> int:
        return len(self._units)

    def keep(self, unit: TrackingUnit) -> None:
        """Add ``unit``; when full, drop the oldest first (logged at ERROR with its jobs)."""
        if len(self._units) >= self._max_units:
            oldest = self._units.popleft()
            self.dropped += 1
            jobs = ",".join(oldest.jobs)
            log.error(
                "tracking backlog full (%d units): dropped the oldest, jobs %s; their requests get no completion",
                self._max_units,
                jobs,
                extra={"job_id": jobs},
            )
        self._units.append(unit)
        self._added.set()

    async def wait(self) -> None:
        """Return once the backlog holds a unit."""
        while not self._units:
            self._added.clear()
            await self._added.wait()

    async def publish(self, send: Send) -> None:
        """Send every unit, oldest first, ``_ROUND`` at a time; return when the backlog is empty.

        A round in which a send fails puts its failed units back in front and raises the first failure. If the
        caller is cancelled mid-round, the whole round goes back: a unit confirmed just then is sent again
        later (its completions may then come twice, with the same ``message_id``), rather than lost.
        """
        while self._units:
            batch = [self._units.popleft() for _ in range(min(_ROUND, len(self._units)))]
            try:
                outcomes = await asyncio.gather(*(send(unit) for unit in batch), return_exceptions=True)
            except asyncio.CancelledError:
                self._units.extendleft(reversed(batch))
                raise
            failed = [unit for unit, outcome in zip(batch, outcomes, strict=True) if outcome is not None]
            if failed:
                self._units.extendleft(reversed(failed))
                raise next(o for o in outcomes if isinstance(o, BaseException))

    async def keep_publishing(self, send: Send) -> None:
        """Until cancelled (the session ends): publish the units whenever there are some."""
        while True:
            await self.wait()
            try:
                await self.publish(send)
            except Exception as exc:
                log.warning("tracking: %d units wait to be published (%r); trying again in %.1f s",
                            len(self), exc, _RETRY_S)  # fmt: skip
                await asyncio.sleep(_RETRY_S)

    async def publish_until(self, time_left: Callable[[], float], send: Send, lost: asyncio.Event) -> None:
        """Stopping: publish what is left while ``time_left()`` (s) is positive; raises BrokerError when the
        session was ``lost`` meanwhile (the caller may connect again), returns at the deadline or once empty."""
        while self._units and (left := time_left()) > 0:
            try:
                async with asyncio.timeout(left):
                    await self.publish(send)
            except TimeoutError:
                return
            except Exception as exc:
                if lost.is_set():
                    raise BrokerError(f"the tracking connection was lost ({exc!r})") from exc
                await asyncio.sleep(min(_RETRY_S, max(0.0, time_left())))
