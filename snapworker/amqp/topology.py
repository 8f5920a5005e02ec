"""The queues snapworker uses, declared durable and idempotently by the worker, the tools and the tests alike."""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractChannel

from snapworker.amqp.partitioning import request_queues
from snapworker.settings import Settings

__all__ = ["declare_topology"]


async def declare_topology(channel: AbstractChannel, settings: Settings) -> None:
    """Declare every queue snapworker uses, durable; the request queue dead-letters to the dead-letter queue.

    Every queue requests wait in (the request queue, its partitions and the urgent twin of each: see
    :func:`~snapworker.amqp.partitioning.request_queues`) is a request queue: same type, same dead-lettering, and
    nothing else (no ``x-max-priority``: declaring new arguments on an existing queue fails)."""
    arguments: dict[str, Any] = {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.dead_letter_queue,
    }
    if settings.queue_type == "quorum":
        arguments |= {"x-queue-type": "quorum", "x-delivery-limit": settings.delivery_limit}
    for name in (settings.result_queue, settings.error_queue, settings.dead_letter_queue):
        await channel.declare_queue(name, durable=True)
    for name in request_queues(settings.request_queue, settings.partitions):
        await channel.declare_queue(name, durable=True, arguments=arguments)
