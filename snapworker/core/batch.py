"""The values the batching core trades in: batches and per-desktop outcomes (merge keys live in
:mod:`snapworker.domain.keys`, shared with the cloud edge; re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from snapworker.contract.models import JobEntry, ResultError
from snapworker.domain.keys import MergeKey

__all__ = ["Batch", "FlushReason", "MergeKey", "Outcome", "OutcomeEntry"]

#: Why a batch was closed: it was full, its linger ran out, the worker's prefetch window was full (nothing more
#: can arrive until something is answered, so waiting is pointless), shutdown, or it carries urgent desktops (a
#: person waits: they go at once, see :mod:`snapworker.core.accumulator`).
FlushReason = Literal["full", "linger", "pressure", "shutdown", "urgent"]

#: What became of some desktops of a batch: a created job or an error. A batch's outcome is a sequence of
#: entries whose desktop_ids together cover the batch exactly once.
OutcomeEntry: TypeAlias = JobEntry | ResultError
Outcome: TypeAlias = tuple[OutcomeEntry, ...]


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch-create call to make: at most MAX_BATCH distinct desktops of one merge key.

    ``segments`` split ``desktop_ids`` along request boundaries (the desktops each request brought to this
    batch, in order), so a rejected batch can be retried request by request to find the culprit.
    """

    id: int
    key: MergeKey
    desktop_ids: tuple[str, ...]
    segments: tuple[tuple[str, ...], ...]
    opened_at: float
    reason: FlushReason
