"""One look at a tracking unit: read its jobs and list its reconciled snapshots, and take what they tell.

Every job some desktop of the unit waits for is read, and per project the snapshots of the desktops answered
from reconciliation (they have no job) are listed, all at once: the read limiter paces them all, and a listing
also serves what other looks ask meanwhile (:class:`~snapworker.cloud.snapshots.SharedListings`). What the
answers mean is decided in :mod:`snapworker.tracking.state`; here only which failure is worth a warning.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from snapworker.cloud.jobs import JobReader, job_not_found
from snapworker.domain.jobs import JobView
from snapworker.errors import ApiCredentialRefused, ApiError
from snapworker.tracking.state import TrackingUnit
from snapworker.tracking.stats import TrackingStats

__all__ = ["look"]

log = logging.getLogger("snapworker.tracking")


async def look(unit: TrackingUnit, reader: JobReader, stats: TrackingStats) -> None:
    """Read and list what ``unit`` waits for and apply it to ``unit``. A read or listing that failed leaves its
    desktops waiting (looked at again later, until the deadline); a refused credential is the worker's one ERROR
    line, not one per read. Anything else unexpected is raised."""
    jobs = unit.jobs_to_read()
    listings = getattr(reader, "listings", None)  # None: a reader that cannot list (a test double)
    wanted = unit.snapshots_to_read() if listings is not None else {}
    since = unit.snapshots_since().timestamp()
    lists = [listings.listed(p, d, since=since) for p, d in wanted.items()] if listings is not None else []
    views, listed = await asyncio.gather(
        asyncio.gather(*(reader.read(project, job) for job, project in jobs.items()), return_exceptions=True),
        asyncio.gather(*lists, return_exceptions=True),
    )
    now = datetime.now(UTC)
    stats.count_reads(views)
    _observe_listings(unit, dict(zip(wanted, listed, strict=True)), now)
    for job_id, view in zip(jobs, views, strict=True):
        if isinstance(view, JobView):
            unit.observe(view, now)
        elif isinstance(view, ApiError) and job_not_found(view):
            unit.job_lost(job_id, now, f"the API does not know job {job_id} ({view.error_code})")
        elif isinstance(view, ApiCredentialRefused):
            pass  # the worker's one ERROR line says so and it pauses; the job is looked at again later
        elif isinstance(view, ApiError):
            log.warning("reading job %s failed (%s); looking again later", job_id, view, extra={"job_id": job_id})
        elif isinstance(view, BaseException):
            raise view


def _observe_listings(unit: TrackingUnit, listed: dict[str, object], now: datetime) -> None:
    """What each project's listing told (its snapshots by desktop, or why it failed) into ``unit``. A failed
    listing leaves its desktops waiting: they are listed again at the next look, until the deadline."""
    for project, found in listed.items():
        if isinstance(found, dict):
            unit.observe_snapshots(project, found, now)
        elif isinstance(found, ApiCredentialRefused):
            pass  # the worker's one ERROR line says so and it pauses
        elif isinstance(found, Exception):  # the API's error, an unreadable listing, no account for it
            log.warning("listing the snapshots of project %s failed (%s); looking again later", project, found,
                        extra={"project_id": project})  # fmt: skip
        elif isinstance(found, BaseException):
            raise found
