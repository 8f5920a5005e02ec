"""Reconciliation: did a call whose answer was lost create snapshots? Ask the API's snapshot listing.

Two callers: the admission gate, for a redelivered request whose record holds an intent without an outcome (its
worker died mid-call), and the sender, for a call whose answer was lost in flight (a dropped connection, a
timeout: ``maybe_created``). Neither sends a desktop again before it is known to be :class:`~.Absent`.

Each desktop gets its verdict from :func:`snapworker.domain.snapshots.attribute` (the attempt's marker decides:
see that module for what stays ambiguous):

- **created**: the desktop is covered; its result entry is a job entry with ``job_id`` ``reconciled:<snapshot_id>``
  (the listing does not say which job made the snapshot);
- **absent**: the call did not create it: the desktop is sent again;
- **unknown** (the listing failed, or cannot tell): the desktop fails with ``SNAPWORKER.UNRECONCILED``,
  ``retryable: true``, ``maybe_created: true``, and the reason.

**Listings are shared and budgeted.** The :class:`Reconciler` queues the desktops asked about per project; a
listing takes the queue's first desktops (up to ``LISTING_DESKTOPS``) only once the read budget granted it (late
binding, as the sender cuts a batch), so every desktop asked about while it waited rides along. After a crash,
5,000 single-desktop requests cost about 50 listings, each a read of the credential's ``READ_RATE_LIMIT`` that job
tracking shares (and, with REDIS_URL, the whole fleet: the budget is the source's ``read_limiter``, see
:mod:`snapworker.cloud.read_budget`); at most ``parallel`` listings per project are in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from snapworker.cloud.limiter import Grant, Limiter
from snapworker.domain.keys import MergeKey
from snapworker.domain.snapshots import Absent, Created, Doubt, Reconciled, SnapshotView, Unknown, attribute

__all__ = ["Reconciler", "SnapshotSource"]

log = logging.getLogger("snapworker.idempotency")

_LISTING_DESKTOPS = 100  # as snapworker.cloud.snapshots.LISTING_DESKTOPS (the runtime does not import the edge)


class SnapshotSource(Protocol):
    """The API's snapshot listing, per project (SnapshotReader for one credential, AccountRouter for several)."""

    def read_limiter(self, project_id: str) -> Limiter: ...

    async def list_snapshots(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float, grant: Grant | None = None
    ) -> Mapping[str, list[SnapshotView]]: ...


@dataclass(slots=True)
class _Ask:
    desktop_id: str
    since: float
    answer: asyncio.Future[list[SnapshotView]]


class Reconciler:
    """See the module docstring. ``source`` lists snapshots; None (an API that cannot list them) makes every
    desktop unknown."""

    @classmethod
    def for_api(cls, api: object) -> Reconciler:
        """A reconciler over what ``api`` offers: its own listing (AccountRouter, a test double with
        ``list_snapshots``), a WorkspaceClient's through a SnapshotReader, or none at all."""
        from snapworker.cloud.client import WorkspaceClient
        from snapworker.cloud.snapshots import SnapshotReader

        if isinstance(api, WorkspaceClient):
            return cls(SnapshotReader(api))
        source: SnapshotSource | None = api if hasattr(api, "list_snapshots") else None  # type: ignore[assignment]
        return cls(source)

    def __init__(self, source: SnapshotSource | None, *, parallel: int = 2) -> None:
        self._source = source
        self._parallel = parallel
        self._queues: dict[str, deque[_Ask]] = {}
        self._listing: dict[str, int] = {}  # project -> listings in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self.listings = 0
        self.totals = {"created": 0, "absent": 0, "unknown": 0}

    async def check(self, key: MergeKey, doubts: Mapping[str, Doubt]) -> Reconciled:
        """The verdict of each desktop of ``doubts`` (of ``key``'s project). Never raises for the API: a listing
        that fails makes its desktops unknown."""
        out = Reconciled()
        if not doubts:
            return out
        if self._source is None:
            out.verdicts.update(dict.fromkeys(doubts, Unknown("this API client cannot list snapshots")))
            return self._counted(key, out)
        loop = asyncio.get_running_loop()
        asks = [_Ask(d, doubt.since, loop.create_future()) for d, doubt in doubts.items()]
        self._queues.setdefault(key.project_id, deque()).extend(asks)
        self._start(key.project_id)
        try:
            for ask in asks:
                doubt = doubts[ask.desktop_id]
                try:
                    out.verdicts[ask.desktop_id] = attribute(doubt, await ask.answer)
                except Exception as exc:  # any failure to list leaves the question open: never guess "absent"
                    out.verdicts[ask.desktop_id] = Unknown(f"listing its snapshots failed: {exc}")
        finally:
            for ask in asks:  # cancelled: nobody waits for the rest any more
                if not ask.answer.done():
                    ask.answer.cancel()
        return self._counted(key, out)

    def _counted(self, key: MergeKey, out: Reconciled) -> Reconciled:
        created, absent, unknown = out.count(Created), out.count(Absent), out.count(Unknown)
        self.totals["created"] += created
        self.totals["absent"] += absent
        self.totals["unknown"] += unknown
        log.info(
            "reconciled %d desktops of project %s against their snapshots: %d created, %d absent, %d unknown",
            len(out.verdicts),
            key.project_id,
            created,
            absent,
            unknown,
            extra={"project_id": key.project_id},
        )
        return out

    def _start(self, project_id: str) -> None:
        while self._listing.get(project_id, 0) < min(self._parallel, len(self._queues.get(project_id, ()))):
            self._listing[project_id] = self._listing.get(project_id, 0) + 1
            task = asyncio.create_task(self._drain(project_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drain(self, project_id: str) -> None:
        """List the project's queued desktops, a listing at a time, until its queue is empty."""
        assert self._source is not None
        try:
            while self._queues.get(project_id):
                grant = None
                try:
                    grant = await self._source.read_limiter(project_id).acquire(project_id)
                except Exception as exc:  # no budget for this project (no account serves it): nobody can list
                    self._fail(self._take(project_id, everything=True), exc)
                    continue
                taken = self._take(project_id)
                if not taken:  # another listing took them while this one waited
                    self._source.read_limiter(project_id).release()
                    continue
                since = min(ask.since for asks in taken.values() for ask in asks)
                self.listings += 1
                try:
                    found = await self._source.list_snapshots(project_id, list(taken), since=since, grant=grant)
                except Exception as exc:
                    self._fail(taken, exc)
                    continue
                for desktop_id, asks in taken.items():
                    for ask in asks:
                        if not ask.answer.done():
                            ask.answer.set_result(list(found.get(desktop_id, ())))
        finally:
            self._listing[project_id] -= 1
            if not self._listing[project_id]:
                del self._listing[project_id]
                if not self._queues.get(project_id):
                    self._queues.pop(project_id, None)

    def _take(self, project_id: str, *, everything: bool = False) -> dict[str, list[_Ask]]:
        """The asks of the first LISTING_DESKTOPS distinct desktops queued (all asks of each), skipping those
        nobody waits for any more."""
        queue = self._queues.get(project_id, deque())
        taken: dict[str, list[_Ask]] = {}
        kept: deque[_Ask] = deque()
        while queue:
            ask = queue.popleft()
            if ask.answer.done():
                continue
            if ask.desktop_id in taken or everything or len(taken) < _LISTING_DESKTOPS:
                taken.setdefault(ask.desktop_id, []).append(ask)
            else:
                kept.append(ask)
        queue.extend(kept)
        return taken

    @staticmethod
    def _fail(taken: Mapping[str, Iterable[_Ask]], exc: Exception) -> None:
        for asks in taken.values():
            for ask in asks:
                if not ask.answer.done():
                    ask.answer.set_exception(exc)
                    with contextlib.suppress(BaseException):
                        ask.answer.exception()  # retrieved: a waiter cancelled meanwhile logs nothing

    async def close(self) -> None:
        """Cancel the listings in flight (their waiters see the cancellation)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
