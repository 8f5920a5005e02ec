"""Helpers shared by tests of every layer (the core's builders are in tests/core/helpers.py)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

__all__ = ["REDIS_HOST", "REDIS_PORT", "redis_test_url", "require_redis", "unused_loopback_port"]

_REDIS = urlsplit(os.environ.get("SNAPWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
REDIS_HOST, REDIS_PORT = _REDIS.hostname or "127.0.0.1", _REDIS.port or 6379


def redis_test_url(db: int) -> str:
    """The test Redis (SNAPWORKER_TEST_REDIS_URL's host and port), database ``db``."""
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


def require_redis() -> None:
    """Skip the test when the test Redis does not answer; under CI (CI=true) fail it instead."""
    try:
        socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=2).close()
    except OSError:
        message = f"Redis does not answer at {REDIS_HOST}:{REDIS_PORT}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)


def unused_loopback_port() -> int:
    """A loopback port nobody listens on right now (the OS picked it free; it is closed again on return)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
