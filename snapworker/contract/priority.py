"""Whether a request is urgent: the body's ``priority`` field and the AMQP ``priority`` property, decided in one place.

A publisher can say "urgent" in either of two ways; whatever needs to know (the worker, when it serves urgent
requests first) asks :func:`is_urgent` rather than reading them itself:

* the body's ``priority`` field (``"normal"`` or ``"urgent"``), which wins whenever it is given;
* else the AMQP ``priority`` property (an octet, 0-255): :data:`URGENT_FROM` (5) or more is urgent.

The threshold follows RabbitMQ. Its priority guide (https://www.rabbitmq.com/docs/priority) advises few priorities
("from 2 to 4 priorities is highly recommended"), treats a message without the property as priority 0 on a classic
priority queue, and one above the queue's ``x-max-priority`` as that maximum. Quorum queues on RabbitMQ 4 need no
declaration and have exactly two priorities, normal and high: 0 to 4 is normal, anything above 4 is high, and a
message without the property counts as 4, i.e. normal (the RabbitMQ blog "RabbitMQ 4.0: New Quorum Queue Features",
https://www.rabbitmq.com/blog/2024/08/28/quorum-queues-in-4.0, following AMQP 1.0's header priority). So what a
quorum queue delivers early is exactly what snapworker calls urgent, and a publisher that never sets a priority
(no field, no property) is normal, as before.

The client publishes "urgent" as :data:`URGENT_AMQP_PRIORITY` (9: high on a quorum queue, the top of a classic queue
declared with any ``x-max-priority`` up to 9, and the highest of the ten priorities, 0-9, that the AMQP 0-9-1 spec
lets a broker support) and "normal" as :data:`NORMAL_AMQP_PRIORITY` (0), so a priority-aware queue and the worker
agree. Pure: no broker types.
"""

from __future__ import annotations

from typing import Final, Literal

__all__ = ["NORMAL_AMQP_PRIORITY", "URGENT_AMQP_PRIORITY", "URGENT_FROM", "Priority", "amqp_priority", "is_urgent"]

#: The values of a request's ``priority`` field.
Priority = Literal["normal", "urgent"]

#: The lowest AMQP ``priority`` property that makes a request urgent (a quorum queue's "high": above 4).
URGENT_FROM: Final = 5
#: The AMQP ``priority`` property the client sets for ``priority="urgent"``.
URGENT_AMQP_PRIORITY: Final = 9
#: The AMQP ``priority`` property the client sets for ``priority="normal"``.
NORMAL_AMQP_PRIORITY: Final = 0


def is_urgent(field: Priority | None, amqp_priority: int | None) -> bool:
    """Whether a request is urgent: its body ``field`` when given (it wins over the property, whatever the
    property says), else whether its AMQP ``amqp_priority`` property is :data:`URGENT_FROM` or more.
    Neither given: not urgent."""
    if field is not None:
        return field == "urgent"
    return amqp_priority is not None and amqp_priority >= URGENT_FROM


def amqp_priority(field: Priority | None) -> int | None:
    """The AMQP ``priority`` property to publish a request with: 9 for urgent, 0 for normal, none (``None``) when
    the request does not say, so a publisher that never sets a priority publishes exactly as before."""
    if field is None:
        return None
    return URGENT_AMQP_PRIORITY if field == "urgent" else NORMAL_AMQP_PRIORITY
