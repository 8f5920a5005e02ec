"""Sending one batch: the API call, and isolating the bad request when a merged batch is rejected.

A batch merges several requests. If the API rejects it as a whole with 400, 404 or 409, one request's desktop
is probably to blame (an unknown or busy desktop), and failing every merged request for it would punish the
innocent. So the batch is split along request boundaries and the halves are retried, recursively, within a
bounded number of extra calls. Never for 401/403 (credentials), 429 (throttling) or 5xx: those are not caused
by one request, and retrying them split would only multiply the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from snapworker.cloud.client import CreatedJob
from snapworker.cloud.limiter import Grant, Limiter
from snapworker.core import Batch, MergeKey, Outcome, OutcomeEntry
from snapworker.errors import ApiAuthError, ApiClientError, ApiError
from snapworker.models import JobEntry, ResultError

__all__ = ["BatchSender", "SnapshotApi", "error_entry"]

log = logging.getLogger("snapworker.sending")

_ISOLATABLE = frozenset({400, 404, 409})


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
    ) -> CreatedJob: ...


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


def _isolatable(exc: ApiError) -> bool:
    return isinstance(exc, ApiClientError) and not isinstance(exc, ApiAuthError) and exc.http_status in _ISOLATABLE


class BatchSender:
    """Turns a batch into its outcome: one entry per call that settled some of its desktops."""

    def __init__(self, api: SnapshotApi, *, max_extra_calls: int) -> None:
        self._api = api
        self._max_extra_calls = max_extra_calls

    async def send(self, batch: Batch, *, grant: Grant | None = None, deadline: float | None = None) -> Outcome:
        """Never raises for an API failure: failures are entries of the outcome.

        ``grant`` is the limiter's permission for the batch's first call (the isolating calls wait for their
        own); ``deadline`` bounds every call (see WorkspaceClient.batch_create).
        """
        budget = [self._max_extra_calls]
        return tuple(await self._send(batch.key, list(batch.segments), budget, grant, deadline))

    async def _send(
        self,
        key: MergeKey,
        segments: list[tuple[str, ...]],
        budget: list[int],
        grant: Grant | None,
        deadline: float | None,
    ) -> list[OutcomeEntry]:
        desktop_ids = [d for segment in segments for d in segment]
        try:
            created = await self._api.batch_create(key, desktop_ids, grant=grant, deadline=deadline)
        except ApiError as exc:
            if len(segments) < 2 or not _isolatable(exc) or budget[0] < 2:
                return [error_entry(desktop_ids, exc)]
            budget[0] -= 2
            half = len(segments) // 2
            log.info(
                "batch of %d requests for project %s rejected with %s %s: retrying the halves to isolate it",
                len(segments),
                key.project_id,
                exc.http_status,
                exc.error_code,
                extra={"project_id": key.project_id},
            )
            first, second = await asyncio.gather(
                self._send(key, segments[:half], budget, None, deadline),
                self._send(key, segments[half:], budget, None, deadline),
            )
            return first + second
        return [
            JobEntry(
                job_id=created.job_id,
                desktop_ids=tuple(desktop_ids),
                possible_duplicate=created.possible_duplicate,
            )
        ]
