"""Following jobs to their end, sans I/O: the tracking state, what a job read changes in it, and when to look again.

A :class:`TrackingUnit` is the whole state of some jobs and the requests whose desktops they cover: it travels as
the body of one durable tracking message (see :mod:`snapworker.tracking.loop`), so no worker keeps it in memory
and whoever holds the message owns it. The requests of one unit are those one batch outcome finished, and their
jobs: one read of a job serves every request of the unit that has desktops in it.

A desktop answered from reconciliation (``job_id`` ``reconciled:<snapshot_id>``: the listing names no job) is
followed by its snapshot instead: the project's snapshot listing gives its status, ``creating`` (still running),
then ``create_success`` (succeeded) or ``create_failed`` (failed). One listing serves every desktop of a project
it asks about (:meth:`TrackingUnit.snapshots_to_read`), in this unit and in others looking at the same time.

Nothing here reads a clock, sleeps or talks to the network: ``now`` (timezone-aware UTC) and a random source
are passed in, and the tests drive it with a fake clock.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from snapworker.contract.models import (
    CompletionStatus,
    DesktopCompletion,
    DesktopOutcome,
    SnapshotCompletion,
    SnapshotResult,
)
from snapworker.domain.jobs import JobView, classify
from snapworker.domain.snapshots import RECONCILED_PREFIX, SnapshotView
from snapworker.tracking.snapshot_status import SNAPSHOT_LOOKBACK_S, snapshot_outcome

__all__ = ["Schedule", "TrackedDesktop", "TrackedRequest", "TrackingUnit", "completion_queue_of", "start_unit"]

_STATE = ConfigDict(extra="forbid", validate_assignment=False)


def completion_queue_of(reply_to: str | None, completion_queue: str) -> str | None:
    """Where a request's completion goes: its ``reply_to``, else COMPLETION_QUEUE when set (``""``: unset).
    None: nobody asked for it, so the request is not tracked at all (no tracking message, no job read)."""
    return reply_to or completion_queue or None


class TrackedDesktop(BaseModel):
    """One desktop of a request and what is known of its sub-job; ``outcome`` None while it runs."""

    model_config = _STATE

    desktop_id: str
    job_id: str
    outcome: DesktopOutcome | None = None
    sub_job_status: str | None = None
    error_code: str | None = None
    fail_reason: str | None = None
    finished_at: datetime | None = None

    def settle(self, outcome: DesktopOutcome, finished_at: datetime, fail_reason: str | None = None) -> None:
        self.outcome, self.finished_at = outcome, finished_at
        if fail_reason is not None:
            self.fail_reason = fail_reason

    @property
    def snapshot_id(self) -> str | None:
        """The snapshot reconciliation found for it (followed through the listing), else None (a job to read)."""
        return self.job_id.removeprefix(RECONCILED_PREFIX) if self.job_id.startswith(RECONCILED_PREFIX) else None


class TrackedRequest(BaseModel):
    """A request whose result listed jobs; where its completion goes (:func:`completion_queue_of`)."""

    model_config = _STATE

    request_id: str
    correlation_id: str | None
    project_id: str
    reply_to: str | None
    desktops: list[TrackedDesktop]

    def completion(self, now: datetime) -> SnapshotCompletion | None:
        """Its completion once every desktop has an outcome, else None."""
        if any(d.outcome is None for d in self.desktops):
            return None
        outcomes = {d.outcome for d in self.desktops}
        status: CompletionStatus
        if "unknown" in outcomes:
            status = "unknown"
        elif outcomes == {"succeeded"}:
            status = "succeeded"
        elif outcomes == {"failed"}:
            status = "failed"
        else:
            status = "partial"
        return SnapshotCompletion(
            request_id=self.request_id,
            correlation_id=self.correlation_id,
            project_id=self.project_id,
            status=status,
            finished_at=now,
            desktops=tuple(
                DesktopCompletion(
                    desktop_id=d.desktop_id,
                    job_id=d.job_id,
                    outcome=d.outcome or "unknown",
                    sub_job_status=d.sub_job_status,
                    error_code=d.error_code,
                    fail_reason=d.fail_reason,
                    finished_at=d.finished_at or now,
                )
                for d in self.desktops
            ),
        )


class TrackingUnit(BaseModel):
    """The body of a tracking message. ``jobs``: job ID -> project ID; ``polls``: looks taken so far."""

    model_config = _STATE

    unit_id: str
    created_at: datetime
    polls: int = 0
    jobs: dict[str, str]
    requests: list[TrackedRequest]

    def jobs_to_read(self) -> dict[str, str]:
        """Job ID -> project ID of the jobs some desktop still waits for."""
        waiting = {d.job_id for r in self.requests for d in r.desktops if d.outcome is None}
        return {job_id: project for job_id, project in self.jobs.items() if job_id in waiting}

    def _waiting(self, job_id: str) -> Iterable[TrackedDesktop]:
        return (d for r in self.requests for d in r.desktops if d.job_id == job_id and d.outcome is None)

    def observe(self, view: JobView, now: datetime) -> None:
        """Take what one read of a job told: a sub-job that ended settles its desktop (``finished_at`` the job's
        end_time if given, else ``now``). A desktop whose job ended without listing it (every page read) is
        ``unknown`` at once: looking again would tell nothing more. Any other status keeps it waiting."""
        ended = view.phase != "running"
        finished_at = _api_time(view.end_time) if ended else None
        for desktop in self._waiting(view.job_id):
            sub = view.sub_jobs.get(desktop.desktop_id)
            if sub is not None:
                desktop.sub_job_status, desktop.error_code = sub.status, sub.error_code
                desktop.fail_reason = sub.fail_reason
                phase = classify(sub.status)
                if phase != "running":
                    desktop.settle(phase, finished_at or now)
            elif ended and view.complete:
                desktop.settle("unknown", now, f"job {view.job_id} ended {view.status} without a sub-job for it")

    def snapshots_to_read(self) -> dict[str, list[str]]:
        """Project ID -> the desktops (each once) whose snapshot found by reconciliation some desktop still waits
        for: one listing of a project's snapshots of up to 100 desktops serves them all."""
        wanted: dict[str, dict[str, None]] = {}
        for request in self.requests:
            for desktop in request.desktops:
                if desktop.outcome is None and desktop.snapshot_id is not None:
                    wanted.setdefault(request.project_id, {})[desktop.desktop_id] = None
        return {project: list(desktops) for project, desktops in wanted.items()}

    def snapshots_since(self) -> datetime:
        """How far back the listings of :meth:`snapshots_to_read` must reach (see SNAPSHOT_LOOKBACK_S)."""
        return self.created_at - timedelta(seconds=SNAPSHOT_LOOKBACK_S)

    def observe_snapshots(self, project_id: str, listed: Mapping[str, Sequence[SnapshotView]], now: datetime) -> None:
        """Take what one listing of ``project_id``'s snapshots told: ``listed`` holds, for each desktop it asked
        about, every snapshot created since :meth:`snapshots_since`. Each waiting desktop of those gets the
        outcome of :func:`~snapworker.tracking.snapshot_status.snapshot_outcome` (``creating``: it waits on);
        desktops the listing did not ask about are left as they are."""
        since = self.snapshots_since()
        for request in self.requests:
            for desktop in request.desktops if request.project_id == project_id else ():
                snapshot_id = desktop.snapshot_id
                if desktop.outcome is None and snapshot_id is not None and desktop.desktop_id in listed:
                    outcome, reason = snapshot_outcome(snapshot_id, listed[desktop.desktop_id], since)
                    if outcome is not None:
                        desktop.settle(outcome, now, reason)

    def job_lost(self, job_id: str, now: datetime, reason: str) -> None:
        """The API does not know the job (any more): its waiting desktops end ``unknown``."""
        for desktop in self._waiting(job_id):
            desktop.settle("unknown", now, reason)

    def expire(self, now: datetime, deadline_s: float) -> bool:
        """Past ``deadline_s`` after the unit began, every waiting desktop ends ``unknown``; whether it was."""
        if now < self.created_at + timedelta(seconds=deadline_s):
            return False
        for request in self.requests:
            for desktop in request.desktops:
                if desktop.outcome is None:
                    desktop.settle("unknown", now, f"no final status within TRACK_DEADLINE_S ({deadline_s:g} s)")
        return True

    def forget_unaddressed(self, completion_queue: str) -> int:
        """Drop the requests whose completion has nowhere to go with this ``completion_queue`` (a unit made while
        COMPLETION_QUEUE was set), and the jobs only they waited for, so no read is spent on them; how many."""
        kept = [r for r in self.requests if completion_queue_of(r.reply_to, completion_queue)]
        dropped = len(self.requests) - len(kept)
        if dropped:
            self.requests = kept
            still = {d.job_id for r in kept for d in r.desktops}
            self.jobs = {job_id: project for job_id, project in self.jobs.items() if job_id in still}
        return dropped

    def take_completions(self, now: datetime) -> list[tuple[SnapshotCompletion, str | None]]:
        """The completions of the requests that have every outcome (with their reply_to); they leave the unit."""
        done: list[tuple[SnapshotCompletion, str | None]] = []
        remaining: list[TrackedRequest] = []
        for request in self.requests:
            completion = request.completion(now)
            if completion is None:
                remaining.append(request)
            else:
                done.append((completion, request.reply_to))
        self.requests = remaining
        still = {d.job_id for r in remaining for d in r.desktops}
        self.jobs = {job_id: project for job_id, project in self.jobs.items() if job_id in still}
        return done

    def seconds_left(self, now: datetime, deadline_s: float) -> float:
        return (self.created_at + timedelta(seconds=deadline_s) - now).total_seconds()


def start_unit(results: Iterable[tuple[SnapshotResult, str | None]], now: datetime) -> TrackingUnit | None:
    """The unit following the jobs of ``results`` (each with its request's reply_to), and the snapshots of the
    desktops answered from reconciliation; None if none has a job."""
    jobs: dict[str, str] = {}
    requests: list[TrackedRequest] = []
    for result, reply_to in results:
        if not result.jobs or result.project_id is None:
            continue
        desktops = [TrackedDesktop(desktop_id=d, job_id=job.job_id) for job in result.jobs for d in job.desktop_ids]
        # found by reconciliation: no job to read (the listing names none); followed through the listing instead
        jobs |= {job.job_id: result.project_id for job in result.jobs if not job.job_id.startswith(RECONCILED_PREFIX)}
        requests.append(
            TrackedRequest(
                request_id=result.request_id,
                correlation_id=result.correlation_id,
                project_id=result.project_id,
                reply_to=reply_to,
                desktops=desktops,
            )
        )
    if not requests:
        return None
    return TrackingUnit(unit_id=uuid.uuid4().hex, created_at=now, jobs=jobs, requests=requests)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When to look at a unit's jobs: ``first_s`` after they were created, then doubling up to ``max_s``, each
    delay shortened by up to ``jitter`` of itself (so units created together spread out), never past the
    deadline. Delays are served by wait queues of fixed TTL, one per :meth:`tiers` value."""

    first_s: float
    max_s: float
    deadline_s: float
    jitter: float = 0.2

    def tiers(self) -> tuple[float, ...]:
        """Every base delay the schedule uses, ascending: the TTLs of the wait queues."""
        tiers: list[float] = []
        delay = self.first_s
        while delay < self.max_s:
            tiers.append(delay)
            delay *= 2
        return (*tiers, self.max_s)

    def delay(self, unit: TrackingUnit, now: datetime, rng: random.Random) -> float:
        """Seconds until the next look at ``unit`` (0 once the deadline is here: the last look, then unknown)."""
        base = min(self.first_s * 2.0 ** min(unit.polls, 60), self.max_s)
        jittered = base * (1 - self.jitter * rng.random())
        return max(0.0, min(jittered, unit.seconds_left(now, self.deadline_s)))

    def tier_for(self, delay: float) -> float:
        """The wait queue's TTL that holds a message for ``delay`` (its own expiration makes it exact)."""
        return next((tier for tier in self.tiers() if tier >= delay), self.max_s)


def _api_time(text: str | None) -> datetime | None:
    """Huawei's ``2026-12-01T02:00:03.512Z`` (or without milliseconds) as an aware datetime; None if unreadable."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None
