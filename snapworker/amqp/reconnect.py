"""Staying connected: serve a broker session, and when it fails, open the next one after a growing pause.

The worker's request consumer and the tracking loop both live this way; the rule is written once here. A serve
that ends normally (the session was lost, or the broker cancelled the consumer) is followed at once by the next;
one that raises a transient error waits 0.5 s, doubling up to 30 s. ``fatal`` errors end the loop (a refused
login or vhost: retrying cannot help).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["keep_serving"]

log = logging.getLogger("snapworker.reconnect")

FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 30.0


async def keep_serving(
    serve_once: Callable[[], Awaitable[None]],
    *,
    stopping: asyncio.Event,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    fatal: tuple[type[BaseException], ...] = (),
    go_on: Callable[[], bool] | None = None,
    pause: Callable[[float], Awaitable[None]] | None = None,
    first_pause_s: float = FIRST_PAUSE_S,
    max_pause_s: float = MAX_PAUSE_S,
) -> None:
    """Call ``serve_once()`` while ``go_on()`` (default: until ``stopping`` is set; see the module). ``pause(s)``
    waits between tries (default: ``s``, cut short by ``stopping``). ``what`` names the loop in the log."""

    async def until_stopping(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=seconds)

    go_on = go_on or (lambda: not stopping.is_set())
    pause = pause or until_stopping
    pause_s = first_pause_s
    while go_on():
        try:
            await serve_once()
        except fatal:
            raise
        except retry_on as exc:
            log.warning("%s failed (%r); retrying in %.1f s", what, exc, pause_s)
            await pause(pause_s)
            pause_s = min(pause_s * 2, max_pause_s)
        else:
            pause_s = first_pause_s
