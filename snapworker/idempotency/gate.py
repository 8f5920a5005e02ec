"""Admission: every keyed request is looked up in the store before it may enter a batch.

Deliveries are gathered while one lookup is in flight and looked up together (one store read per gathering, not
one per request). Then, per request, desktop by desktop:

- an outcome is recorded that holds (a job, or an error that publishing again cannot fix): **reused**;
- a call was announced without a recorded outcome, or its outcome was "maybe created" (a lost answer): its
  intent is a **lease** (:func:`~snapworker.idempotency.journal.lease_s`): while it may still be running, the
  request is **held** here (looked up again every IDEMPOTENCY_HOLD_S: its owner's outcome may come meanwhile),
  never reconciled; once it has passed, and RECONCILE_DELAY_S more (the API may still be recording the call),
  the desktops are **reconciled** against the API's snapshots (:mod:`.reconcile`), by the markers of those
  attempts: found ones are reused, unknown ones fail ``maybe_created``, absent ones are sent;
- a record that cannot be read (written by a newer version, or damaged): its desktops are reconciled, as if
  each had been announced by an attempt whose marker is not known;
- anything else (no record, or a retryable error that created nothing): **sent**, through the batching core.

A request with nothing left to send is answered from its record without entering a batch. One whose key has a
call in flight in this very process waits for that call's outcome first (its rows are about to change).

If the store cannot be read, the message is **held** in memory and looked up again every IDEMPOTENCY_HOLD_S,
never sent blindly, and never given back to the broker for it: a requeue would count as a redelivery, and spend a
quorum queue's delivery limit. What is held is bounded by the prefetch window. A request with neither
request_id nor message_id skips all of this: at least once only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from snapworker.amqp.session import Delivery
from snapworker.contract.intake import Accepted
from snapworker.contract.models import SnapshotResult
from snapworker.core import MergeKey, OutcomeEntry, compose_result
from snapworker.domain.snapshots import Absent, Created, Doubt, Unknown, given_name, marked_disks, marker
from snapworker.errors import StoreUnavailable
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.journal import CallJournal, Keyed
from snapworker.idempotency.reconcile import Reconciler
from snapworker.idempotency.store import IdempotencyStore, fingerprint, holds, state_of

__all__ = ["AdmissionGate"]

log = logging.getLogger("snapworker.idempotency")

#: (delivery, the request as it may enter the core) -> None: the worker's own way in.
Submit = Callable[[Delivery, Accepted], None]
Answer = Callable[[Delivery, SnapshotResult], None]
#: Runs a task that owns ``deliveries``: if it raises, they are answered failed (the worker's guard).
Spawn = Callable[[Coroutine[Any, Any, None], Sequence[Delivery]], None]
#: (deliveries, the exception, what was being done): the worker's guard, for what raised outside a task.
Fail = Callable[[Sequence[Delivery], BaseException, str], None]

_GATHER_S = 0.005
#: the attempt id of a doubt whose record could not be read: its marker, if it wrote one, is not known
_UNKNOWN_ATTEMPT = ""
_GATHER_MAX = 500


class AdmissionGate:
    """See the module docstring. ``namespace`` (the request queue) keeps deployments' keys apart."""

    def __init__(
        self,
        store: IdempotencyStore,
        journal: CallJournal,
        health: StoreHealth,
        *,
        namespace: str,
        hold_s: float,
        reconcile_delay_s: float,
        lease_s: float,
        submit: Submit,
        answer: Answer,
        spawn: Spawn,
        fail: Fail,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._journal = journal
        self._health = health
        self._namespace = namespace
        self._hold_s = hold_s
        self._reconcile_delay_s = reconcile_delay_s
        self._lease_s = lease_s
        self._submit = submit
        self._answer = answer
        self._spawn = spawn
        self._fail = fail
        self._wall_clock = wall_clock
        self.reconciler = Reconciler(None)  # until the worker has an API that lists snapshots
        self._waiting: list[tuple[Delivery, Accepted, Keyed]] = []
        self._looking = False
        self._full: asyncio.Future[None] | None = None  # set when the gathering burst reached _GATHER_MAX
        # delivery -> (every desktop of the request, the entries reused for some): merged into its result
        self._reused: dict[Delivery, tuple[tuple[str, ...], dict[str, OutcomeEntry]]] = {}

    def admit(self, delivery: Delivery, accepted: Accepted) -> bool:
        """Take a valid request for lookup; False when it has no key (the caller submits it as usual)."""
        if accepted.request.request_id is None and delivery.envelope.message_id is None:
            return False
        keyed = Keyed(f"{self._namespace}\x1f{accepted.request_id}", fingerprint(accepted.request))
        self._waiting.append((delivery, accepted, keyed))
        if not self._looking:
            self._looking = True
            self._spawn(self._look_up(), ())
        elif self._full is not None and len(self._waiting) >= _GATHER_MAX and not self._full.done():
            self._full.set_result(None)
        return True

    def finish(self, delivery: Delivery, result: SnapshotResult) -> SnapshotResult:
        """The result to publish for a request the core finished: with its reused entries merged in."""
        self._journal.forget((delivery,))
        reused = self._reused.pop(delivery, None)
        if reused is None:
            return result
        desktops, entries = reused
        for job in result.jobs:
            entries.update(dict.fromkeys(job.desktop_ids, job))
        for error in result.errors:
            entries.update(dict.fromkeys(error.desktop_ids, error))
        merged = compose_result(
            result.request_id, result.correlation_id, result.project_id, desktops, entries, datetime.now(UTC)
        )
        return merged.model_copy(update={"finished_at": result.finished_at})

    def forget(self, deliveries: Iterable[Delivery]) -> None:
        """The session of these deliveries is gone: they will be redelivered."""
        for delivery in deliveries:
            self._reused.pop(delivery, None)
        self._journal.forget(deliveries)

    # -- lookups
    async def _look_up(self) -> None:
        try:
            while self._waiting:
                if len(self._waiting) < _GATHER_MAX:
                    # Let the rest of a burst of deliveries join: one read (and one thread hop) for many requests
                    # instead of one per delivery; a few ms against LINGER_MS, cut short once the burst is large.
                    self._full = asyncio.get_running_loop().create_future()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(_GATHER_S):
                            await self._full
                    self._full = None
                gathered, self._waiting = self._waiting, []
                live = [item for item in gathered if not item[0].session.lost.is_set()]
                if not live:
                    continue
                try:
                    found = await self._health.timed(self._store.lookup([keyed.key for _, _, keyed in live]))
                except StoreUnavailable:
                    for item in live:
                        self._hold(item, self._hold_s)
                    continue
                except Exception as exc:  # a bug in the store: these requests are answered, never stranded
                    self._fail([delivery for delivery, _, _ in live], exc, "looking requests up")
                    continue
                for delivery, accepted, keyed in live:
                    if delivery.session.lost.is_set():
                        continue
                    try:
                        settled = self._journal.in_flight(keyed.key)
                        if settled is not None:  # a call of ours is about to change its rows: look again after it
                            self._spawn(self._after(settled, delivery, accepted, keyed), (delivery,))
                            continue
                        self._decide(delivery, accepted, keyed, found.get(keyed.key, []))
                    except Exception as exc:  # one request's fault is its own: the others of the gathering go on
                        self._fail([delivery], exc, f"deciding request {accepted.request_id} from its record")
        finally:
            self._looking = False

    async def _after(self, settled: asyncio.Event, delivery: Delivery, accepted: Accepted, keyed: Keyed) -> None:
        await settled.wait()
        self._readmit((delivery, accepted, keyed))

    def _readmit(self, item: tuple[Delivery, Accepted, Keyed]) -> None:
        """Look ``item`` up again (unless its session was lost meanwhile: the broker has it back)."""
        if item[0].session.lost.is_set() or item[0].settled:
            return
        self._waiting.append(item)
        if not self._looking:
            self._looking = True
            self._spawn(self._look_up(), ())

    def _decide(self, delivery: Delivery, accepted: Accepted, keyed: Keyed, rows: Sequence[Any]) -> None:
        request = accepted.request
        if not rows:
            self._enter(delivery, accepted, keyed, request.desktop_ids, {})
            return
        state = state_of(rows, keyed.fingerprint)
        reused = {d: e for d, e in state.outcomes.items() if holds(e)}
        attempts = state.attempts
        if state.unreadable:
            # a row of this request could not be read: any desktop not answered for good may have been sent
            # under an attempt whose marker is unknown; its time is the earliest row's (0: not known either)
            since = min((row.at for row in rows), default=0.0)
            attempts = {d: dict(attempts.get(d, {})) for d in accepted.request.desktop_ids if d not in reused}
            for announced in attempts.values():
                announced.setdefault(_UNKNOWN_ATTEMPT, since)
        if attempts:
            leased_from = state.leased_from()
            if state.unreadable:
                leased_from = max(leased_from or 0.0, max((row.at for row in rows), default=0.0))
            wait = (leased_from or 0.0) + self._lease_s + self._reconcile_delay_s - self._wall_clock()
            if wait > 0:
                # another worker's call may still be running (or the API still recording it): not ours to list
                self._hold((delivery, accepted, keyed), min(wait, self._hold_s))
                return
            self._spawn(self._reconcile(delivery, accepted, keyed, reused, attempts), (delivery,))
            return
        self._settle(delivery, accepted, keyed, reused)

    async def _reconcile(
        self,
        delivery: Delivery,
        accepted: Accepted,
        keyed: Keyed,
        reused: dict[str, OutcomeEntry],
        attempts: dict[str, dict[str, float]],
    ) -> None:
        key = MergeKey.of(accepted.request)
        marked, name = bool(marked_disks(key)), given_name(key)
        # an attempt of unknown id wrote a marker nobody knows: then only the name and time can tell
        doubts = {
            desktop_id: Doubt(
                # an attempt of unknown id wrote a marker nobody knows: then only the name and time can tell
                frozenset(marker(a) for a in announced)
                if marked and _UNKNOWN_ATTEMPT not in announced
                else frozenset(),
                min(announced.values()),
                name,
            )
            for desktop_id, announced in attempts.items()
        }
        checked = await self.reconciler.check(key, doubts)
        counts = self._health.reconciled
        for verdict, kind in (("created", Created), ("absent", Absent), ("unknown", Unknown)):
            counts[verdict] += checked.count(kind)
        for entry in checked.entries(why="its worker stopped before the call's outcome was recorded"):
            reused[entry.desktop_ids[0]] = entry
        if not delivery.session.lost.is_set():
            self._settle(delivery, accepted, keyed, reused)

    def _settle(self, delivery: Delivery, accepted: Accepted, keyed: Keyed, reused: dict[str, OutcomeEntry]) -> None:
        desktops = accepted.request.desktop_ids
        to_send = tuple(d for d in desktops if d not in reused)
        if to_send:
            self._enter(delivery, accepted, keyed, to_send, reused)
            return
        self._health.from_record += 1
        log.info(
            "request %s answered from its record: no call made",
            accepted.request_id,
            extra={"request_id": accepted.request_id, "project_id": accepted.request.project_id},
        )
        result = compose_result(
            accepted.request_id,
            accepted.correlation_id,
            accepted.request.project_id,
            desktops,
            reused,
            datetime.now(UTC),
        )
        self._answer(delivery, result)

    def _enter(
        self,
        delivery: Delivery,
        accepted: Accepted,
        keyed: Keyed,
        to_send: tuple[str, ...],
        reused: dict[str, OutcomeEntry],
    ) -> None:
        self._journal.register(delivery, keyed)
        if reused:
            self._reused[delivery] = (accepted.request.desktop_ids, reused)
            request = accepted.request.model_copy(update={"desktop_ids": to_send})
            accepted = Accepted(request, accepted.request_id, accepted.correlation_id)
        self._submit(delivery, accepted)

    def _hold(self, item: tuple[Delivery, Accepted, Keyed], delay_s: float) -> None:
        """Keep ``item`` held, and look it up again in ``delay_s``."""
        self._health.held += 1
        asyncio.get_running_loop().call_later(delay_s, self._readmit, item)
