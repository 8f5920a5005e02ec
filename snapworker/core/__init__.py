"""The sans-I/O batching core: data and ``now`` in, data out. No asyncio, no clock, no network imports."""

from snapworker.core.batch import Batch, FlushReason, MergeKey, Outcome, OutcomeEntry
from snapworker.core.engine import BatchingCore, Finished, RequestMeta
from snapworker.core.ledger import compose_result
from snapworker.core.window import WindowPolicy

__all__ = [
    "Batch",
    "BatchingCore",
    "Finished",
    "FlushReason",
    "MergeKey",
    "Outcome",
    "OutcomeEntry",
    "RequestMeta",
    "WindowPolicy",
    "compose_result",
]
