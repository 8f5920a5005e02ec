"""Is this worker part of a fleet set up to waste calls? Read from the request queue's consumer count.

Workers started with one environment (a Procfile, ``docker compose --scale``) all consume the request queue: each
consumer is one worker (unpartitioned) or one worker's partition router (``PARTITIONS``), so the count is the
fleet's size. Two settings decide what such a fleet costs:

- ``PARTITIONS`` (on by default): without it, every worker gets a share of every project's requests and cuts its own
  partial batch of each, so the fleet makes up to one extra call per project and worker (measured: 3 workers
  had an economy of 0.57 where partitioned ones had 0.98; see docs/fleet.md).
- ``REDIS_URL``: without it, the workers share ``RATE_LIMIT`` only approximately (each takes its share of it by
  the number of routing workers it sees, see ``Partitions``' ``on_workers``), and 429 answers and the limiters'
  back-off absorb the rest.

:func:`fleet_warning` is pure (the worker logs it at start, ``snapworker check`` shows it as a row);
:func:`request_queue_consumers` reads the count with a passive declare.
"""

from __future__ import annotations

import aiormq

from snapworker.amqp.errors import CHANNEL_ERRORS
from snapworker.errors import BrokerError
from snapworker.settings import Settings

__all__ = ["fleet_warning", "request_queue_consumers"]


def fleet_warning(workers: int, settings: Settings) -> str | None:
    """What a fleet of ``workers`` workers on ``settings.request_queue`` wastes with these settings, or None.

    ``workers`` counts every worker of the fleet, this one included: a worker starting passes the consumers it
    found plus one, ``check`` passes the consumers it sees. None for a lone worker, and for a fleet with
    ``PARTITIONS`` and ``REDIS_URL`` both set.
    """
    if workers < 2:
        return None
    queue = settings.request_queue
    shared = settings.redis_url is not None
    if settings.partitions == 0:
        cost = "each project's requests are spread over every worker, which cuts a partial batch of its own"
        if not shared:
            cost += ", and each worker spends RATE_LIMIT on its own (429 answers)"
        return (
            f"{workers} workers consume {queue!r} with PARTITIONS=0: {cost}; unset SNAPWORKER_PARTITIONS (the "
            f"default partitions the requests by project){'' if shared else ' and set SNAPWORKER_REDIS_URL'}"
        )
    if not shared:
        return (
            f"{workers} workers consume {queue!r} without SNAPWORKER_REDIS_URL: they share RATE_LIMIT "
            f"({settings.rate_limit:g}/s) only by each taking 1/{workers} of it, and the API's 429 answers (each "
            f"a call spent) absorb the rest while workers come and go; set SNAPWORKER_REDIS_URL for one exact budget"
        )
    return None


async def request_queue_consumers(channel: aiormq.abc.AbstractChannel, settings: Settings) -> int:
    """The consumers of the request queue now, by a passive declare on ``channel`` (the queue must exist: a
    passive declare of a missing queue closes the channel, and BrokerError is raised)."""
    try:
        ok = await channel.queue_declare(settings.request_queue, passive=True)
    except CHANNEL_ERRORS as exc:
        raise BrokerError(f"cannot count the consumers of {settings.request_queue!r}: {exc!r}") from exc
    return int(ok.consumer_count or 0)
