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

import logging
from collections.abc import Mapping

from snapworker.cloud.snapshots import SharedListings, SnapshotSource
from snapworker.domain.keys import MergeKey
from snapworker.domain.snapshots import Absent, Created, Doubt, Reconciled, Unknown, attribute

__all__ = ["Reconciler", "SnapshotSource"]

log = logging.getLogger("snapworker.idempotency")


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
        self._listings = SharedListings(source, parallel=parallel) if source is not None else None
        self.totals = {"created": 0, "absent": 0, "unknown": 0}

    @property
    def listings(self) -> int:
        """Listings made (each one or more pages)."""
        return self._listings.listings if self._listings is not None else 0

    async def check(self, key: MergeKey, doubts: Mapping[str, Doubt]) -> Reconciled:
        """The verdict of each desktop of ``doubts`` (of ``key``'s project). Never raises for the API: a listing
        that fails makes its desktops unknown."""
        out = Reconciled()
        if not doubts:
            return out
        if self._listings is None:
            out.verdicts.update(dict.fromkeys(doubts, Unknown("this API client cannot list snapshots")))
            return self._counted(key, out)
        answers = self._listings.ask(key.project_id, {d: doubt.since for d, doubt in doubts.items()})
        try:
            for desktop_id, answer in answers.items():
                try:
                    out.verdicts[desktop_id] = attribute(doubts[desktop_id], await answer)
                except Exception as exc:  # any failure to list leaves the question open: never guess "absent"
                    out.verdicts[desktop_id] = Unknown(f"listing its snapshots failed: {exc}")
        finally:
            for answer in answers.values():  # cancelled: nobody waits for the rest any more
                if not answer.done():
                    answer.cancel()
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

    async def close(self) -> None:
        """Cancel the listings in flight (their waiters see the cancellation)."""
        if self._listings is not None:
            await self._listings.close()
