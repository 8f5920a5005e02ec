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
    """The worker's tracker: None when TRACK_JOBS is off or ``api`` cannot read jobs (a test double).

    ``api`` is the worker's: one WorkspaceClient, or with ACCOUNTS_FILE the AccountRouter, whose jobs are each
    read with the client of their project's account (its credential and read budget). A job of a project that
    no account serves (any more: the file changed since the job was created) is not declared lost: its read
    fails with SNAPWORKER.NO_ACCOUNT, logged as a failed read, and it is looked at again later, by whichever
    worker takes the unit (one whose file serves the project reads it), until TRACK_DEADLINE_S ends it
    ``unknown``.
    """
    from snapworker.cloud.accounts import AccountRouter
    from snapworker.cloud.client import WorkspaceClient
    from snapworker.cloud.jobs import JobReader
    from snapworker.cloud.snapshots import SharedListings, SnapshotReader
    from snapworker.tracking.loop import Tracker

    if not settings.track_jobs or not isinstance(api, WorkspaceClient | AccountRouter):
        return None
    reader = JobReader(api)
    # desktops answered from reconciliation are followed by their snapshot's status, under the same read budgets
    reader.listings = SharedListings(api if isinstance(api, AccountRouter) else SnapshotReader(api))
    return Tracker(settings, reader)
