"""What a look publishes, and publishing it: completions and the next tracking message, in one confirmed write.

Why one write: a look that finishes a unit publishes up to a hundred completions. Published one by one through
aio-pika (a ``Message`` object, the channel lock, a timeout scope and a write each), they were the largest part
of the worker's CPU with tracking on (py-spy, 20,000 requests against an unlimited API: 21 % of all samples).
:func:`~snapworker.amqp.publish.publish_confirmed` carries them in one write while each keeps its own confirm
and its own return, as results are published.

Every message is persistent and mandatory, so a queue that does not exist comes back as :class:`Unroutable`
for that message alone; the loop decides what that means (a completion falls back to COMPLETION_QUEUE).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import aiormq
from pamqp import commands as spec
from pamqp.common import FieldTable

from snapworker.amqp.errors import CONNECTION_ERRORS
from snapworker.amqp.publish import Outgoing, publish_confirmed
from snapworker.contract.models import COMPLETION_TYPE, SnapshotCompletion
from snapworker.errors import BrokerError, UnroutableResult
from snapworker.tracking.state import TrackingUnit, completion_queue_of

__all__ = [
    "TRACKING_TYPE",
    "TrackingPublisher",
    "Unroutable",
    "commit_look",
    "completion_message",
    "tracking_message",
]

log = logging.getLogger("snapworker.tracking")

#: AMQP ``type`` of a tracking message.
TRACKING_TYPE = "snapworker.tracking"
#: Header naming the reply_to queue a completion could not go to (it went to COMPLETION_QUEUE instead).
UNDELIVERABLE_HEADER = "x-snapworker-undeliverable-reply-to"


class Unroutable(UnroutableResult):
    """The broker returned the message: its queue does not exist."""


def completion_message(
    completion: SnapshotCompletion, queue: str, unit_id: str, *, undeliverable_reply_to: str | None = None
) -> Outgoing:
    """A request's completion for ``queue``. Its ``message_id`` is ``completion:<request_id>:<unit_id>``: the
    same if the look is repeated after a crash, so consumers deduplicate by it."""
    headers: FieldTable = {"x-snapworker-status": completion.status}
    if undeliverable_reply_to is not None:
        headers[UNDELIVERABLE_HEADER] = undeliverable_reply_to
    properties = spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=f"completion:{completion.request_id}:{unit_id}",
        correlation_id=completion.correlation_id,
        message_type=COMPLETION_TYPE,
        headers=headers,
    )
    return Outgoing(completion.model_dump_json().encode(), queue, properties)


def tracking_message(unit: TrackingUnit, queue: str, delay_s: float) -> Outgoing:
    """``unit`` as the tracking message that waits ``delay_s`` in wait queue ``queue``."""
    properties = spec.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=f"{unit.unit_id}:{unit.polls}",
        message_type=TRACKING_TYPE,
        expiration=str(max(1, round(delay_s * 1000))),  # milliseconds; "0" would expire at once
    )
    return Outgoing(unit.model_dump_json().encode(), queue, properties)


class TrackingPublisher:
    """Publishes on the tracking connection's confirming channel (aiormq's, under aio-pika's)."""

    def __init__(self, channel: aiormq.Channel) -> None:
        self._channel = channel

    async def publish(self, messages: Sequence[Outgoing]) -> list[BrokerError | None]:
        """Publish ``messages`` in one write and wait for every confirm; one outcome per message, in order:
        None (confirmed), :class:`Unroutable` (no such queue) or another BrokerError (refused, too large).
        Raises BrokerError when the channel or connection failed: nothing of the call can be trusted then."""
        if not messages:
            return []
        try:
            outcomes = await publish_confirmed(self._channel, messages)
        except CONNECTION_ERRORS as exc:
            raise BrokerError(f"publishing {len(messages)} tracking messages failed: {exc!r}") from exc
        translated: list[BrokerError | None] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome is None or isinstance(outcome, BrokerError):  # BrokerError: MessageTooLarge, not sent
                translated.append(outcome)
            elif isinstance(outcome, aiormq.exceptions.PublishError):
                translated.append(Unroutable(f"no queue {message.queue!r}"))
            elif isinstance(outcome, aiormq.exceptions.DeliveryError):
                translated.append(BrokerError(f"the broker refused a message for {message.queue!r}: {outcome!r}"))
            else:  # the channel closed under the publish
                raise BrokerError(f"publishing to {message.queue!r} failed: {outcome!r}") from outcome
        return translated


async def commit_look(
    publisher: TrackingPublisher,
    unit_id: str,
    done: Sequence[tuple[SnapshotCompletion, str | None]],
    next_message: Outgoing | None,
    completion_queue: str,
) -> list[SnapshotCompletion]:
    """Publish the completions of ``done`` (each with its request's reply_to) and ``next_message`` in one write;
    the completions delivered. Raises the BrokerError of anything that must be kept and was not confirmed: the
    next tracking message, a completion the broker refused, or one returned from COMPLETION_QUEUE itself.

    A completion whose reply_to queue is gone goes to ``completion_queue`` if set (a second write, with the
    queue it missed in a header), else it is dropped with a warning (not delivered). A request with neither is
    not in ``done`` (the unit forgot it)."""
    sent = [(c, q) for c, reply_to in done if (q := completion_queue_of(reply_to, completion_queue)) is not None]
    messages = [completion_message(c, queue, unit_id) for c, queue in sent]
    if next_message is not None:
        messages.append(next_message)
    outcomes = await publisher.publish(messages)
    if next_message is not None and outcomes[-1] is not None:
        raise outcomes[-1]  # the unit's next state was not kept
    delivered: list[SnapshotCompletion] = []
    detours: list[Outgoing] = []
    for (completion, queue), outcome in zip(sent, outcomes, strict=False):
        if outcome is None:
            delivered.append(completion)
            continue
        if not isinstance(outcome, Unroutable) or queue == completion_queue:
            raise outcome  # refused, or the completion queue itself is gone: looked at again
        if not completion_queue:
            log.warning("reply_to queue %r does not exist and SNAPWORKER_COMPLETION_QUEUE is not set: the "
                        "completion of request %s is dropped", queue, completion.request_id)  # fmt: skip
            continue
        log.warning("reply_to queue %r does not exist: the completion goes to the completion queue", queue)
        detours.append(completion_message(completion, completion_queue, unit_id, undeliverable_reply_to=queue))
        delivered.append(completion)
    for outcome in await publisher.publish(detours):
        if outcome is not None:
            raise outcome
    return delivered
