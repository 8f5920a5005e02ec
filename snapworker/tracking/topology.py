"""The tracking loop's queues: which exist, how they are declared, and what ``snapworker check`` should say of them.

All durable::

    <TRACKING_QUEUE>.wait.<ms>ms  one per schedule tier: x-message-ttl = the tier, dead-lettering to ↓
    <TRACKING_QUEUE>              consumed by every worker (TRACK_PREFETCH messages each)
    <COMPLETION_QUEUE>            only when set: completions of requests without reply_to (and of those whose
                                  reply_to queue is gone), at most COMPLETION_QUEUE_MAX_LENGTH, the oldest dropped

No wait queue has a consumer, but each message leaves it when its TTL ends; the tracking queue holds one message
per tracking unit in flight, and units are only made for requests whose completion somebody asked for. Neither
is bounded: a drop there would lose completions that were asked for. The completion queue may have no consumer
at all, so it is bounded (see :mod:`snapworker.amqp.bounded`).
"""

from __future__ import annotations

from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel

from snapworker.amqp.bounded import bound_problem, declare_bounded
from snapworker.amqp.errors import vhost_of
from snapworker.settings import Settings
from snapworker.tracking.state import Schedule

__all__ = ["completion_queue_problems", "declare_tracking_topology", "schedule_of", "tracking_queues", "wait_queue"]


def schedule_of(settings: Settings) -> Schedule:
    return Schedule(settings.track_first_poll_s, settings.track_max_poll_s, settings.track_deadline_s)


def wait_queue(settings: Settings, tier_s: float) -> str:
    """The wait queue whose messages live ``tier_s`` seconds."""
    return f"{settings.tracking_queue}.wait.{round(tier_s * 1000)}ms"


def tracking_queues(settings: Settings) -> list[str]:
    """Every queue the tracking declares: the wait queues, the tracking queue and the completion queue if set."""
    waits = [wait_queue(settings, tier) for tier in schedule_of(settings).tiers()]
    return [*waits, settings.tracking_queue, *([settings.completion_queue] if settings.completion_queue else [])]


async def declare_tracking_topology(channel: AbstractChannel, settings: Settings) -> None:
    """Declare the queues of :func:`tracking_queues`. A completion queue that exists without its bound is used as
    it is, with a warning naming the policy that bounds it (``channel`` is then reopened)."""
    await channel.declare_queue(settings.tracking_queue, durable=True)
    if settings.completion_queue:
        vhost = vhost_of(settings.amqp_url.get_secret_value())
        await declare_bounded(channel, settings.completion_queue, settings.completion_queue_max_length, vhost=vhost)
    for tier in schedule_of(settings).tiers():
        arguments: dict[str, Any] = {
            "x-message-ttl": round(tier * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.tracking_queue,
        }
        await channel.declare_queue(wait_queue(settings, tier), durable=True, arguments=arguments)


async def completion_queue_problems(settings: Settings, channel: AbstractChannel) -> list[str]:
    """What an operator should know of the completion queue, one sentence each (none when tracking is off or
    SNAPWORKER_COMPLETION_QUEUE is unset): declared without its bound, full (the oldest being dropped), or holding
    completions that no consumer reads. Creates nothing; ``channel`` is open again when this returns."""
    name, bound = settings.completion_queue, settings.completion_queue_max_length
    if not settings.track_jobs or not name:
        return []
    problem = await bound_problem(channel, name, bound, vhost=vhost_of(settings.amqp_url.get_secret_value()))
    problems = [problem] if problem else []
    try:
        declared = await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        await channel.reopen()
        return problems  # not declared yet: the first worker declares it, bounded
    messages = int(declared.declaration_result.message_count or 0)
    consumers = int(declared.declaration_result.consumer_count or 0)
    if bound and messages >= bound:
        problems.append(
            f"completion queue {name!r} is full ({messages} completions): the oldest are being dropped; read it or "
            f"raise SNAPWORKER_COMPLETION_QUEUE_MAX_LENGTH"
        )
    if messages and not consumers:
        problems.append(
            f"completion queue {name!r} holds {messages} completions and no consumer reads it: read them "
            f"(`snapworker results --completions`) or unset SNAPWORKER_COMPLETION_QUEUE"
        )
    return problems
