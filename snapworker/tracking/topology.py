"""The tracking loop's queues: which exist, how they are declared, and what ``snapworker check`` should say of them.

All durable; with SNAPWORKER_TRACKING_QUEUE_TYPE=quorum (the default)::

    <TRACKING_QUEUE>.quorum.wait.<ms>ms  one per schedule tier: quorum, x-message-ttl = the tier, dead-lettering
                                         at least once to ↓ (x-dead-letter-strategy at-least-once, which needs
                                         x-overflow reject-publish: never reached, the queue has no bound)
    <TRACKING_QUEUE>                     quorum; consumed by every worker (TRACK_PREFETCH messages each)
    <COMPLETION_QUEUE>                   only when set: completions of requests without reply_to (and of those
                                         whose reply_to queue is gone), at most COMPLETION_QUEUE_MAX_LENGTH, the
                                         oldest dropped

and with ``classic``, classic queues: ``<TRACKING_QUEUE>.wait.<ms>ms`` dead-lettering at most once (the broker's
only strategy for classic queues) into a classic ``<TRACKING_QUEUE>``.

The two kinds of wait queue have different names, so workers of either kind (and of versions before the setting,
which made the classic ones) can run side by side: each publishes into its own wait queues, and all of them end in
``<TRACKING_QUEUE>``. A quorum worker that finds ``<TRACKING_QUEUE>`` classic uses it as it is, or replaces it by
a quorum queue when no worker consumes it (:mod:`snapworker.tracking.migration`): nothing waiting is lost.

No wait queue has a consumer, but each message leaves it when its TTL ends; the tracking queue holds one message
per tracking unit in flight, and units are only made for requests whose completion somebody asked for. Neither
is bounded: a drop there would lose completions that were asked for. The completion queue may have no consumer
at all, so it is bounded (see :mod:`snapworker.amqp.bounded`).
"""

from __future__ import annotations

import logging
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel

from snapworker.amqp.bounded import bound_problem, declare_bounded
from snapworker.amqp.errors import vhost_of
from snapworker.settings import Settings
from snapworker.tracking.migration import replace_when_idle
from snapworker.tracking.state import Schedule

__all__ = [
    "QUORUM",
    "classic_wait_queue",
    "completion_queue_problems",
    "declare_tracking_topology",
    "schedule_of",
    "tracking_queues",
    "wait_arguments",
    "wait_queue",
]

log = logging.getLogger("snapworker.tracking")

#: The arguments of a quorum tracking queue (the wait queues add theirs).
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}


def schedule_of(settings: Settings) -> Schedule:
    return Schedule(settings.track_first_poll_s, settings.track_max_poll_s, settings.track_deadline_s)


def classic_wait_queue(settings: Settings, tier_s: float) -> str:
    """The classic wait queue whose messages live ``tier_s`` seconds (the only kind before quorum queues)."""
    return f"{settings.tracking_queue}.wait.{round(tier_s * 1000)}ms"


def wait_queue(settings: Settings, tier_s: float) -> str:
    """The wait queue, of SNAPWORKER_TRACKING_QUEUE_TYPE, whose messages live ``tier_s`` seconds."""
    if settings.tracking_queue_type == "classic":
        return classic_wait_queue(settings, tier_s)
    return f"{settings.tracking_queue}.quorum.wait.{round(tier_s * 1000)}ms"


def wait_arguments(settings: Settings, tier_s: float) -> dict[str, Any]:
    """The arguments :func:`wait_queue` is declared with: a TTL of ``tier_s``, dead-lettering to the tracking
    queue (at least once for quorum queues)."""
    arguments: dict[str, Any] = {
        "x-message-ttl": round(tier_s * 1000),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.tracking_queue,
    }
    if settings.tracking_queue_type == "quorum":
        arguments |= {**QUORUM, "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return arguments


def tracking_queues(settings: Settings) -> list[str]:
    """Every queue the tracking declares: the wait queues, the tracking queue and the completion queue if set."""
    waits = [wait_queue(settings, tier) for tier in schedule_of(settings).tiers()]
    return [*waits, settings.tracking_queue, *([settings.completion_queue] if settings.completion_queue else [])]


async def declare_tracking_topology(channel: AbstractChannel, settings: Settings) -> None:
    """Declare the queues of :func:`tracking_queues`, of SNAPWORKER_TRACKING_QUEUE_TYPE. ``channel`` must confirm
    publishes; it is reopened after any refusal.

    A tracking queue that exists of the other type is used as it is, with a warning: nothing is lost, and every
    wait queue still dead-letters into it. Quorum asked for and a classic one found with no consumer (no worker
    running): it is replaced by a quorum queue, after the classic wait queues' messages were moved into the
    quorum ones (:func:`~snapworker.tracking.migration.replace_when_idle`). A completion queue that exists without
    its bound is used as it is, with a warning naming the policy that bounds it."""
    queue, quorum = settings.tracking_queue, settings.tracking_queue_type == "quorum"
    try:
        await channel.declare_queue(queue, durable=True, arguments=QUORUM if quorum else None)
        refused = None
    except aiormq.exceptions.ChannelPreconditionFailed as exc:  # of the other type: made before, or by the other
        await channel.reopen()
        refused = exc.args[0] if exc.args else repr(exc)
    if settings.completion_queue:
        vhost = vhost_of(settings.amqp_url.get_secret_value())
        await declare_bounded(channel, settings.completion_queue, settings.completion_queue_max_length, vhost=vhost)
    tiers = schedule_of(settings).tiers()
    for tier in tiers:
        await channel.declare_queue(wait_queue(settings, tier), durable=True, arguments=wait_arguments(settings, tier))
    if refused is None:
        return
    if quorum:
        moves = [(classic_wait_queue(settings, tier), wait_queue(settings, tier)) for tier in tiers]
        if await replace_when_idle(channel, queue, QUORUM, moves=moves, park=wait_queue(settings, tiers[0])):
            log.info("the classic tracking queue %r was replaced by a quorum queue; nothing waiting was lost", queue)
            return
        log.warning("tracking queue %r is a classic queue that workers consume (or that filled while it was being "
                    "replaced) (%s): it is used as it is. Nothing is lost: the quorum wait queues dead-letter into it "
                    "at least once. The first worker to start while no worker consumes it makes it a quorum queue",
                    queue, refused)  # fmt: skip
    else:
        log.warning("tracking queue %r is a quorum queue (%s): it is used as it is; the classic wait queues "
                    "dead-letter into it at most once", queue, refused)  # fmt: skip


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
