"""What one batch's calls need of the world, and the result entries a failed call makes.

The :class:`~snapworker.runtime.calls.BatchCaller` talks to the API client, the idempotency journal and the
reconciler through these protocols only (fakes in tests, the real ones in the worker).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, Limiter
from snapworker.contract.models import ResultError
from snapworker.core import Batch, MergeKey, Outcome
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.snapshots import Doubt, Reconciled
from snapworker.errors import ApiError

__all__ = ["Journal", "Reconcile", "SnapshotApi", "error_entry", "internal_error"]


class SnapshotApi(Protocol):
    """What the sender needs of the API client (a fake in tests, WorkspaceClient in production)."""

    @property
    def limiter(self) -> Limiter: ...

    async def batch_create(
        self,
        key: MergeKey,
        desktop_ids: Sequence[str],
        *,
        grant: Grant | None = None,
        deadline: float | None = None,
        marker: str | None = None,
        max_tries: int | None = None,
        lease: CallLease | None = None,
    ) -> CreatedJob: ...


class Journal(Protocol):
    """Records made around a batch's calls (snapworker.idempotency's journal): ``before_call`` records the
    ``attempt`` (its id is in the calls' marker) and returns None to let the calls go, or the batch's outcome
    without calling; ``after_call`` sees the outcome before the results do; ``abandon`` is called instead of
    ``after_call`` when the sending was cancelled (the intent stays: a redelivery reconciles it)."""

    async def before_call(self, batch: Batch, deadline: float | None, attempt: str) -> Outcome | None: ...

    async def after_call(self, batch: Batch, outcome: Outcome) -> None: ...

    def abandon(self, batch: Batch) -> None: ...


class Reconcile(Protocol):
    """Which of some desktops a lost call made snapshots of (snapworker.idempotency's Reconciler)."""

    async def check(self, key: MergeKey, doubts: Mapping[str, Doubt]) -> Reconciled: ...


def error_entry(desktop_ids: Sequence[str], exc: ApiError) -> ResultError:
    """The result entry for desktops whose call failed with ``exc``."""
    return ResultError(
        desktop_ids=tuple(desktop_ids),
        http_status=exc.http_status,
        error_code=exc.error_code,
        error_msg=exc.error_msg[:2000],
        error_detail=exc.error_detail,
        api_request_id=exc.api_request_id,
        retryable=exc.retryable,
        maybe_created=exc.maybe_created,
    )


def internal_error(desktop_ids: Sequence[str], exc: BaseException) -> ResultError:
    """The result entry for desktops whose sending raised ``exc`` unexpectedly: retryable, and maybe created
    (it may have struck after a request was written, so they are listed before any is sent again)."""
    return ResultError(
        desktop_ids=tuple(desktop_ids),
        http_status=None,
        error_code="SNAPWORKER.INTERNAL",
        error_msg=f"internal error: {exc!r}"[:2000],
        retryable=True,
        maybe_created=True,
    )
