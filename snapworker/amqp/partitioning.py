"""Key affinity for a fleet, without I/O: which partition a request belongs to, and which partitions to own.

A fleet of workers reading one queue gets each project's requests spread over every worker, so each worker cuts
its own partial batch of every project and the fleet spends up to one extra call per project and worker. With
``PARTITIONS`` set, every request is routed by its project to one of N partition queues, and each partition is
consumed by one worker at a time: a project's desktops meet in one worker again and its batches fill.

Ownership needs no coordinator: every worker looks at the broker's consumer counts (how many workers are routing,
which partitions nobody consumes) and claims or releases one partition per step, aiming at an equal share. A
partition whose owner died has no consumer any more, so another worker claims it at its next step.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from snapworker.contract.priority import is_urgent

__all__ = [
    "ROUTER_MADE_ID",
    "ClaimStep",
    "Route",
    "next_claim_step",
    "partition_of",
    "partition_queue",
    "request_queues",
    "route_of",
    "urgent_queue",
]

#: Header of a copy whose message_id the router made up (the request had none): the consumer reads such a copy as
#: keyless, as it would the original. (A copy must carry a message_id: returns are matched to their publish by it.)
ROUTER_MADE_ID = "x-snapworker-router-made-id"


def partition_queue(request_queue: str, partition: int) -> str:
    """The name of partition ``partition`` of ``request_queue``."""
    return f"{request_queue}.p{partition:03d}"


def urgent_queue(queue: str) -> str:
    """The urgent twin of a queue of requests: ``<REQUEST_QUEUE>.urgent`` for the request queue, and
    ``<partition queue>.urgent`` for a partition. Whoever consumes ``queue`` consumes its twin too."""
    return f"{queue}.urgent"


def request_queues(request_queue: str, partitions: int) -> list[str]:
    """Every queue requests wait in: the request queue, its urgent twin, and each partition with its twin (what
    the topology declares, and what a test or tool that declared it deletes)."""
    queues = [request_queue, *(partition_queue(request_queue, p) for p in range(partitions))]
    return [name for queue in queues for name in (queue, urgent_queue(queue))]


@dataclass(frozen=True, slots=True)
class Route:
    """Where the router sends a request: its partition, and whether to that partition's urgent twin."""

    partition: int
    urgent: bool


def route_of(body: bytes, partitions: int, amqp_priority: int | None = None) -> Route:
    """The route of a request, read from its body once: the partition by its project_id, stable across processes
    and hosts (CRC-32, not Python's salted ``hash``; a body without a readable project goes anywhere: its owner
    answers it invalid), urgent as :func:`~snapworker.contract.priority.is_urgent` says from the body's
    ``priority`` field and the AMQP ``amqp_priority`` property. A ``priority`` field of another value counts as
    absent here (the owner answers the request invalid anyway)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError, TypeError):
        data = None
    fields = data if isinstance(data, dict) else {}
    project = fields.get("project_id")
    key = project.encode("utf-8", "surrogatepass") if isinstance(project, str) else body
    field = fields.get("priority")
    priority = field if field in ("normal", "urgent") else None
    return Route(zlib.crc32(key) % partitions, is_urgent(priority, amqp_priority))


def partition_of(body: bytes, partitions: int) -> int:
    """The partition of a request body (see :func:`route_of`)."""
    return route_of(body, partitions).partition


@dataclass(frozen=True, slots=True)
class ClaimStep:
    """Start (``claim``) or stop (``release``) consuming one partition."""

    action: Literal["claim", "release"]
    partition: int


def next_claim_step(
    owned: frozenset[int],
    consumers: Mapping[int, int],
    workers: int,
    order: Sequence[int],
    coin: float,
) -> ClaimStep | None:
    """The one change this worker makes now, or None.

    ``consumers`` is the broker's consumer count of each partition (ours included), ``workers`` how many workers
    route requests (consumers of the request queue), ``order`` this worker's preference of partitions (a
    shuffled range, so that workers starting together try different ones first) and ``coin`` a random number
    in [0, 1). One step at a time, because the counts lag: a worker that claimed everything before the others
    showed up would split every project again when it gives partitions back.
    """
    share = math.ceil(len(order) / max(1, workers))
    # Two workers that claimed the same free partition at once: each gives it up on a coin toss, so that one of
    # them soon keeps it alone (both leaving only delays it by a step).
    contested = [p for p in order if p in owned and consumers.get(p, 0) > 1]
    if contested and coin < 0.5:
        return ClaimStep("release", contested[0])
    if len(owned) > share:
        return ClaimStep("release", next(p for p in reversed(order) if p in owned))
    if len(owned) < share:
        free = [p for p in order if p not in owned and consumers.get(p, 0) == 0]
        if free:
            return ClaimStep("claim", free[0])
    return None
