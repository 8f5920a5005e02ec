"""snapworker: batches Huawei Cloud Workspace snapshot requests from RabbitMQ into rate-limited API calls.

The public API is what ``__all__`` lists; everything else may change between versions.
"""

from snapworker.client import SnapshotClient
from snapworker.contract.models import (
    INVALID_REQUEST_CODE,
    DiskSnapshotInfo,
    JobEntry,
    ResultError,
    SnapshotCompletion,
    SnapshotRequest,
    SnapshotResult,
)
from snapworker.errors import (
    ApiAuthError,
    ApiCallAbandoned,
    ApiClientError,
    ApiCredentialRefused,
    ApiDeadlineExceeded,
    ApiError,
    ApiResponseLost,
    ApiResponseTimeout,
    ApiServerError,
    ApiStatusError,
    ApiThrottled,
    ApiTransportError,
    BrokerError,
    BrokerRefused,
    ConfigError,
    InvalidMessage,
    MessageTooLarge,
    ResultTimeout,
    SnapworkerError,
    StoreUnavailable,
    UnroutableResult,
)
from snapworker.runtime.worker import Worker
from snapworker.settings import Settings, load_settings


def __getattr__(name: str) -> str:
    # __version__ is read from package metadata on first use: importlib.metadata costs start-up time
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("snapworker")
        except PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module 'snapworker' has no attribute {name!r}")


__all__ = [
    "INVALID_REQUEST_CODE",
    "ApiAuthError",
    "ApiCallAbandoned",
    "ApiClientError",
    "ApiCredentialRefused",
    "ApiDeadlineExceeded",
    "ApiError",
    "ApiResponseLost",
    "ApiResponseTimeout",
    "ApiServerError",
    "ApiStatusError",
    "ApiThrottled",
    "ApiTransportError",
    "BrokerError",
    "BrokerRefused",
    "ConfigError",
    "DiskSnapshotInfo",
    "InvalidMessage",
    "JobEntry",
    "MessageTooLarge",
    "ResultError",
    "ResultTimeout",
    "Settings",
    "SnapshotClient",
    "SnapshotCompletion",
    "SnapshotRequest",
    "SnapshotResult",
    "SnapworkerError",
    "StoreUnavailable",
    "UnroutableResult",
    "Worker",
    "__version__",
    "load_settings",
]
