"""Durable idempotency: a redelivered request never makes a second snapshot of a desktop.

Each keyed request (request_id, else message_id) gets an intent row before each call that carries its desktops
and an outcome row after it (:mod:`.journal`); a request arriving again is looked up first (:mod:`.gate`):
answered from its record, reconciled against the API's snapshots where only the intent is known
(:mod:`.reconcile`), and only what was never sent goes to the batching core. Stores: SQLite under STATE_DIR
(:mod:`.sqlite_store`), or Redis for fleets (:mod:`.redis_store`), behind :class:`IdempotencyStore`.

:class:`Idempotency` is the worker's one handle on all of it; :func:`build_idempotency` makes it from the
settings (None when IDEMPOTENCY_STORE is ``off``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from snapworker.amqp.session import Delivery
from snapworker.contract.intake import Accepted
from snapworker.contract.models import SnapshotResult
from snapworker.core import BatchingCore
from snapworker.idempotency.gate import AdmissionGate, Answer, Fail, Spawn, Submit
from snapworker.idempotency.health import StoreHealth
from snapworker.idempotency.journal import CallJournal, lease_s
from snapworker.idempotency.reconcile import Reconciler
from snapworker.idempotency.store import IdempotencyStore
from snapworker.settings import Settings

__all__ = ["Idempotency", "IdempotencyStore", "build_idempotency", "build_store"]

log = logging.getLogger("snapworker.idempotency")


def build_store(settings: Settings) -> IdempotencyStore:
    """The store the settings choose (IDEMPOTENCY_STORE: sqlite under STATE_DIR, or redis at REDIS_URL)."""
    if settings.idempotency_backend == "redis":
        from snapworker.idempotency.redis_store import RedisStore

        assert settings.redis_url is not None  # checked by Settings
        return RedisStore(settings.redis_url.get_secret_value(), ttl_s=settings.idempotency_ttl_s)
    from snapworker.idempotency.sqlite_store import SqliteStore

    return SqliteStore(settings.state_path, ttl_s=settings.idempotency_ttl_s, max_rows=settings.idempotency_max_records)


class Idempotency:
    """The gate (admission), the journal (the sender's hooks) and the store's health, over one store."""

    def __init__(
        self,
        settings: Settings,
        store: IdempotencyStore,
        core: BatchingCore,
        *,
        submit: Submit,
        answer: Answer,
        spawn: Spawn,
        fail: Fail,
    ) -> None:
        self.store = store
        self.health = StoreHealth(settings.idempotency_backend)
        self.journal = CallJournal(store, core, self.health, hold_s=settings.idempotency_hold_s)
        self.gate = AdmissionGate(
            store,
            self.journal,
            self.health,
            namespace=settings.request_queue,
            hold_s=settings.idempotency_hold_s,
            reconcile_delay_s=settings.reconcile_delay_s,
            lease_s=lease_s(settings.connect_timeout_s, settings.read_timeout_s),
            submit=submit,
            answer=answer,
            spawn=spawn,
            fail=fail,
        )

    def use_reconciler(self, reconciler: Reconciler) -> None:
        """Reconcile redelivered requests through ``reconciler`` (the one the sender uses too: listings of both
        share the read budget and each other's listings)."""
        self.gate.reconciler = reconciler

    def admit(self, delivery: Delivery, accepted: Accepted) -> bool:
        return self.gate.admit(delivery, accepted)

    def finish(self, delivery: Delivery, result: SnapshotResult) -> SnapshotResult:
        return self.gate.finish(delivery, result)

    def forget(self, deliveries: Iterable[Delivery]) -> None:
        self.gate.forget(deliveries)

    @property
    def available(self) -> bool:
        return self.health.available

    async def close(self) -> None:
        await self.store.close()


def build_idempotency(
    settings: Settings, core: BatchingCore, *, submit: Submit, answer: Answer, spawn: Spawn, fail: Fail
) -> Idempotency | None:
    """The worker's idempotency, or None when IDEMPOTENCY_STORE is ``off`` (at least once only)."""
    if settings.idempotency_backend == "off":
        return None
    store = build_store(settings)
    where = settings.state_path if settings.idempotency_backend == "sqlite" else "REDIS_URL"
    log.info("idempotency store: %s (%s)", settings.idempotency_backend, where)
    return Idempotency(settings, store, core, submit=submit, answer=answer, spawn=spawn, fail=fail)
