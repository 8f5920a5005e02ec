"""Helpers shared by tests of every layer (the core's builders are in tests/core/helpers.py)."""

from __future__ import annotations

import socket

__all__ = ["unused_loopback_port"]


def unused_loopback_port() -> int:
    """A loopback port nobody listens on right now (the OS picked it free; it is closed again on return)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
