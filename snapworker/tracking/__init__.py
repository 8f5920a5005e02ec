"""Following every created job to its end and publishing one completion per request (issue 13).

:mod:`~snapworker.tracking.state` decides (sans I/O); :mod:`~snapworker.tracking.loop` moves tracking messages
through RabbitMQ; :mod:`snapworker.cloud.jobs` reads the jobs. The worker calls :func:`tracker_for` once.
Nothing is imported here eagerly: the sans-I/O modules stay free of aiohttp and aio-pika.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapworker.settings import Settings

if TYPE_CHECKING:
    from snapworker.tracking.loop import Tracker

__all__ = ["tracker_for"]


def tracker_for(settings: Settings, api: object) -> Tracker | None:
    """The worker's tracker: None when TRACK_JOBS is off or ``api`` cannot read jobs (a test double)."""
    from snapworker.cloud.client import WorkspaceClient
    from snapworker.cloud.jobs import JobReader
    from snapworker.tracking.loop import Tracker

    if not settings.track_jobs or not isinstance(api, WorkspaceClient):
        return None
    return Tracker(settings, JobReader(api))
