"""RabbitMQ's management HTTP API, as ``snapworker top`` reads it: each queue's unacknowledged messages.

A passive declare (AMQP) counts only the messages *ready* for delivery; those delivered and not yet acked (the
requests workers hold) are counted only by the management plugin. This module asks it, read-only, for one
virtual host's queues. Its figures are the plugin's statistics, refreshed every few seconds (5 by default),
not live ones. Failures come back as a short text for the frame, never as an exception.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

__all__ = ["ManagementApi", "QueueCounts"]

_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class QueueCounts:
    ready: int
    unacked: int
    consumers: int


class ManagementApi:
    """``GET {url}/api/queues/{vhost}``. Credentials are the URL's, else the AMQP URL's (RabbitMQ shares its
    users between AMQP and HTTP)."""

    def __init__(self, url: str, vhost: str, amqp_url: str) -> None:
        parts = urlsplit(url)
        fallback = urlsplit(amqp_url)
        user = parts.username or fallback.username or "guest"
        password = parts.password if parts.username else (fallback.password or "guest")
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        netloc = parts.hostname or ""
        netloc = f"[{netloc}]" if ":" in netloc else netloc
        if parts.port is not None:
            netloc += f":{parts.port}"
        base = urlunsplit(parts._replace(netloc=netloc, query="", fragment="")).rstrip("/")
        self.url = f"{base}/api/queues/{quote(vhost, safe='')}"
        """Without credentials: fit to show."""

    async def queues(self, session: aiohttp.ClientSession) -> dict[str, QueueCounts] | str:
        """Every queue of the virtual host by name, or why they could not be read."""
        columns = "name,messages_ready,messages_unacknowledged,consumers"
        try:
            async with (
                asyncio.timeout(_TIMEOUT_S),
                session.get(self.url, params={"columns": columns}, headers=self._headers) as response,
            ):
                if response.status != 200:
                    return f"management API: HTTP {response.status}"
                listed = await response.json()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"management API unreachable ({type(exc).__name__})"
        except ValueError:  # not JSON
            return "management API: not JSON"
        if not isinstance(listed, list):
            return "management API: not a list of queues"
        counts: dict[str, QueueCounts] = {}
        for queue in listed:
            if isinstance(queue, dict) and isinstance(queue.get("name"), str):
                counts[queue["name"]] = QueueCounts(
                    _count(queue.get("messages_ready")),
                    _count(queue.get("messages_unacknowledged")),
                    _count(queue.get("consumers")),
                )
        return counts


def _count(value: object) -> int:
    # a queue with no statistics yet has no message fields
    return int(value) if isinstance(value, int | float) else 0
