"""Bounded queues: declared with a length limit, and a migration path for a queue that exists without it.

A queue that may have no consumer must not grow until the broker raises its memory or disk alarm, which blocks
every publisher of every service on that broker. Such a queue is declared with ``x-max-length`` and
``x-overflow: drop-head`` (past the bound the oldest message goes). RabbitMQ refuses to change the arguments of
an existing queue: declaring the bound on a queue made before it fails with PRECONDITION_FAILED, which also
closes the channel. :func:`declare_bounded` then keeps using the queue as it is and logs the command that
bounds it in place: a policy, which RabbitMQ applies to existing queues without redeclaring them (where both
a policy and the arguments set a max-length, the smaller one applies).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

__all__ = ["bound_arguments", "bound_problem", "declare_bounded", "policy_command"]

log = logging.getLogger("snapworker.amqp")


def bound_arguments(max_length: int) -> dict[str, Any]:
    """The declare arguments of a queue holding at most ``max_length`` ready messages (0: none, unbounded)."""
    if max_length < 0:
        raise ValueError("max_length must be 0 (unbounded) or more")
    return {"x-max-length": max_length, "x-overflow": "drop-head"} if max_length else {}


def policy_command(queue: str, max_length: int, vhost: str = "/") -> str:
    """The ``rabbitmqctl`` command that bounds the existing ``queue`` in ``vhost`` as :func:`bound_arguments`
    would, quoted for a POSIX shell. ``max_length`` must be positive (a policy of 0 would empty the queue)."""
    if max_length < 1:
        raise ValueError("a policy bounds a queue to at least 1 message")
    name = re.sub(r"[^A-Za-z0-9]+", "-", queue).strip("-") or "queue"
    definition = json.dumps({"max-length": max_length, "overflow": "drop-head"}, separators=(",", ":"))
    words = ["rabbitmqctl", "set_policy"]
    if vhost != "/":
        words += ["-p", vhost]
    words += [name, f"^{re.escape(queue)}$", definition, "--apply-to", "queues"]
    return " ".join(shlex.quote(word) for word in words)


async def declare_bounded(channel: AbstractChannel, queue: str, max_length: int, *, vhost: str = "/") -> AbstractQueue:
    """Declare the durable ``queue`` with at most ``max_length`` ready messages, the oldest dropped past it
    (0: no bound, a plain durable declare).

    If the queue already exists with other arguments (made before the bound, or bounded differently), the broker
    refuses with PRECONDITION_FAILED and closes ``channel``: it is reopened (same confirms and returns settings),
    the queue is declared passively and used as it is, and one WARNING names the queue and the policy command
    that bounds it in place (with no bound asked for, it says the queue keeps the arguments it has). Any other
    failure propagates."""
    arguments = bound_arguments(max_length)
    try:
        return await channel.declare_queue(queue, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        await channel.reopen()
        declared = await channel.declare_queue(queue, passive=True)
        if not max_length:
            log.warning("queue %r exists with other arguments (%s); it is used as it is, keeping them",
                        queue, exc.args[0] if exc.args else exc)  # fmt: skip
            return declared
        log.warning(
            "queue %r exists without the bound of %d messages (%s); it is used as it is. Bound it in place, "
            "without redeclaring (a policy already doing so is fine, and this warning then stays): %s",
            queue,
            max_length,
            exc.args[0] if exc.args else exc,
            policy_command(queue, max_length, vhost),
        )
        return declared


async def bound_problem(channel: AbstractChannel, queue: str, max_length: int, *, vhost: str = "/") -> str | None:
    """What is wrong with the bound of the existing ``queue``, or None (also when it does not exist, or for no
    bound). Never creates the queue; ``channel`` is open again when this returns."""
    if not max_length:
        return None
    try:
        await channel.declare_queue(queue, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        await channel.reopen()
        return None
    try:
        await channel.declare_queue(queue, durable=True, arguments=bound_arguments(max_length))
    except aiormq.exceptions.ChannelPreconditionFailed:
        await channel.reopen()
        return (
            f"queue {queue!r} was declared without the bound of {max_length} messages; unless a policy bounds "
            f"it already, run: {policy_command(queue, max_length, vhost)}"
        )
    return None
