"""What a call asks, before each try, of whoever wants its answer: the :class:`CallLease` protocol.

A batch-create call may wait long for the rate limiter (a throttled API pauses every call). Meanwhile the
requests it would answer may have gone back to the broker (their session was lost) and reached another worker:
a try sent then would race that worker's own call, and make a second snapshot. So the client asks the call's
lease twice per try: while it waits for the limiter (``lapsed``: stop waiting), and once granted, just before
the request is written (``before_try``: the owner may renew its intent there, or say no). Either way the call
ends with :class:`~snapworker.errors.ApiCallAbandoned`, and nothing of that try was sent.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["CallLease"]


class CallLease(Protocol):
    """The right of one batch's call to send its tries (see the module)."""

    @property
    def lapsed(self) -> asyncio.Event:
        """Set once nobody waits for the call's answer: no try starts after it."""
        ...

    async def before_try(self) -> bool:
        """Called after the limiter granted a try and before it is sent: False stops the call (nothing sent)."""
        ...
