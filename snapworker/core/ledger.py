"""The ledger: which requests wait on which desktops, and each request's result once all are settled."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from snapworker.contract.models import JobEntry, ResultError, ResultStatus, SnapshotResult
from snapworker.core.batch import OutcomeEntry

__all__ = ["Ledger", "RequestMeta", "compose_result"]

Ticket = Hashable


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """What a result echoes back about its request."""

    request_id: str
    correlation_id: str | None
    project_id: str


@dataclass(slots=True)
class _Open:
    meta: RequestMeta
    desktop_ids: tuple[str, ...]
    settled: dict[str, OutcomeEntry] = field(default_factory=dict)


class Ledger:
    """Collects per-desktop outcomes per request and yields each request's result exactly once.

    A request is finished when every one of its distinct desktops has an outcome. Several requests may wait on
    the same desktop (it is sent once and they share the outcome).
    """

    def __init__(self) -> None:
        self._open: dict[Ticket, _Open] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, ticket: Ticket) -> bool:
        return ticket in self._open

    def open(self, ticket: Ticket, meta: RequestMeta, desktop_ids: tuple[str, ...]) -> None:
        if ticket in self._open:
            raise ValueError(f"ticket {ticket!r} is already open")
        self._open[ticket] = _Open(meta, desktop_ids)

    def unsettled(self, ticket: Ticket) -> list[str]:
        """The request's desktops still without an outcome."""
        request = self._open[ticket]
        return [d for d in request.desktop_ids if d not in request.settled]

    def forget(self, ticket: Ticket) -> None:
        """Drop a request without a result (its message will be redelivered)."""
        del self._open[ticket]

    def settle(self, ticket: Ticket, desktop_id: str, entry: OutcomeEntry, now: datetime) -> SnapshotResult | None:
        """Record one desktop's outcome; return the request's result when this was its last desktop."""
        request = self._open.get(ticket)
        if request is None:
            return None
        request.settled.setdefault(desktop_id, entry)
        if len(request.settled) < len(request.desktop_ids):
            return None
        del self._open[ticket]
        return _result(request, now)


def _result(request: _Open, now: datetime) -> SnapshotResult:
    meta = request.meta
    return compose_result(
        meta.request_id, meta.correlation_id, meta.project_id, request.desktop_ids, request.settled, now
    )


def compose_result(
    request_id: str,
    correlation_id: str | None,
    project_id: str | None,
    desktop_ids: Sequence[str],
    settled: Mapping[str, OutcomeEntry],
    now: datetime,
) -> SnapshotResult:
    """The result of a request whose every desktop has an entry in ``settled``: desktops settled by one entry
    (entries are shared objects) share its line, in the request's own order of desktops."""
    groups: dict[int, tuple[OutcomeEntry, list[str]]] = {}
    for desktop_id in desktop_ids:
        entry = settled[desktop_id]
        groups.setdefault(id(entry), (entry, []))[1].append(desktop_id)
    jobs: list[JobEntry] = []
    errors: list[ResultError] = []
    for entry, desktops in groups.values():
        narrowed = entry.model_copy(update={"desktop_ids": tuple(desktops)})
        if isinstance(narrowed, JobEntry):
            jobs.append(narrowed)
        else:
            errors.append(narrowed)
    status: ResultStatus = "accepted" if not errors else ("partial" if jobs else "failed")
    return SnapshotResult(
        request_id=request_id,
        correlation_id=correlation_id,
        project_id=project_id,
        status=status,
        finished_at=now.astimezone(UTC),
        jobs=tuple(jobs),
        errors=tuple(errors),
    )
