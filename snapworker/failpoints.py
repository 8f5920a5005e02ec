"""Failpoints: named places where a test may have the process die at once, as ``kill -9`` would there.

The idea of TiKV's fail-rs, cut to what crash tests need. Code marks a dangerous moment with
``failpoint("after_api_before_record")``; a test starts a worker with ``SNAPWORKER_FAILPOINTS`` listing that name
(comma-separated; read through :class:`~snapworker.settings.Settings` like every setting) and the process sends
itself SIGKILL when it gets there: no ``finally`` blocks, no flushes, no goodbye to the broker.

Contract: with no failpoint configured (production), :func:`failpoint` is one falsy test of a module global:
nothing is looked up, logged or counted. Names are free-form; the ones snapworker marks are in :data:`POINTS`.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["POINTS", "configure", "failpoint"]

#: The failpoints snapworker marks, and what dying there proves.
POINTS = {
    "after_intent_before_api": "the intent is recorded, and the call was never made",
    "after_api_before_record": "batch-create answered (a job exists) but its outcome is not recorded yet",
    "after_record_before_publish": "the outcome is recorded but the results are not published (nor acked)",
}

_active: frozenset[str] = frozenset()


def configure(spec: str) -> None:
    """Arm the failpoints named in ``spec`` (comma-separated; empty disarms them all)."""
    global _active
    _active = frozenset(name.strip() for name in spec.split(",") if name.strip())


def failpoint(name: str) -> None:
    """Die here with SIGKILL if ``name`` is armed; otherwise do nothing."""
    if _active and name in _active:
        # Written straight to fd 2: the logging machinery may buffer, and nothing after this line runs.
        os.write(2, f"failpoint {name}: killing the process\n".encode())
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # only if SIGKILL could not be delivered (it always can on POSIX)
