"""The wire contract: what other services publish to snapworker and what they get back.

Every model is frozen and forbids unknown fields, so a typo in a publisher cannot silently change what gets
snapshotted. ``schemas/*.schema.json`` are generated from these models (``snapworker schema --out schemas/``) and a
test fails when the files drift from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator

from snapworker.contract.priority import Priority

__all__ = [
    "COMPLETION_TYPE",
    "INVALID_REQUEST_CODE",
    "CompletionStatus",
    "DesktopCompletion",
    "DesktopOutcome",
    "DiskSnapshotInfo",
    "DiskType",
    "JobEntry",
    "ResultError",
    "ResultStatus",
    "SnapshotCompletion",
    "SnapshotRequest",
    "SnapshotResult",
]

#: ``error_code`` of a message that is not a valid request (nothing was sent to the API for it).
INVALID_REQUEST_CODE = "SNAPWORKER.INVALID_REQUEST"

# Both IDs go into URL paths and JSON bodies of the cloud API: a strict charset rules out path tricks.
ProjectId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
DesktopId = Annotated[str, StringConstraints(min_length=1, max_length=36, pattern=r"^[A-Za-z0-9_-]+$")]
DiskType = Literal["SYSTEM_DISK", "DATA_DISKS", "ALL"]
ResultStatus = Literal["accepted", "partial", "failed", "invalid"]
CompletionStatus = Literal["succeeded", "partial", "failed", "unknown"]
DesktopOutcome = Literal["succeeded", "failed", "unknown"]

#: AMQP ``type`` property of a completion (a result has none): tells the two apart on one reply queue.
COMPLETION_TYPE = "snapworker.completion"

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class DiskSnapshotInfo(BaseModel):
    """Name and description the cloud gives the snapshots of one kind of disk."""

    model_config = _FROZEN

    name: Annotated[str | None, Field(max_length=64)] = None
    description: Annotated[str | None, Field(max_length=255)] = None


class SnapshotRequest(BaseModel):
    """One message on the request queue: snapshot these desktops of one project."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="SnapshotRequest")

    project_id: ProjectId
    desktop_ids: Annotated[
        tuple[DesktopId, ...],
        Field(min_length=1, max_length=1000, description="Repeats inside one request count once."),
    ]
    disk_type: DiskType | None = None
    system_disk_snapshot: DiskSnapshotInfo | None = None
    data_disk_snapshot: DiskSnapshotInfo | None = None
    request_id: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=128,
            description="Echoed in the result; defaults to the AMQP message_id, else a new UUID.",
        ),
    ] = None
    priority: Annotated[
        Priority | None,
        Field(
            description="urgent: an on-demand request, to be served before bulk ones; normal: a bulk request. "
            "Given, it wins over the AMQP priority property; absent, the property decides (5 or more is urgent, "
            "as a quorum queue's high priority), and without either the request is normal.",
        ),
    ] = None

    @field_validator("desktop_ids")
    @classmethod
    def _drop_repeats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # dict.fromkeys keeps the first occurrence and the publisher's order.
        return tuple(dict.fromkeys(value))


class JobEntry(BaseModel):
    """A cloud job that covers some of the request's desktops."""

    model_config = _FROZEN

    job_id: str = Field(
        description="The batch-create job making these snapshots; reconciled:<snapshot_id> when a call whose answer "
        "was lost is found to have made the desktop's snapshot (the listing does not name the job)."
    )
    desktop_ids: tuple[str, ...]
    possible_duplicate: bool = Field(
        default=False,
        description="Always false: a call whose answer was lost is reconciled against the API's snapshots, never "
        "sent again blindly. Kept so that readers of earlier results keep working.",
    )


class ResultError(BaseModel):
    """Why some of the request's desktops are not covered by a job."""

    model_config = _FROZEN

    desktop_ids: tuple[str, ...]
    http_status: int | None = Field(description="None for transport errors (no HTTP response).")
    error_code: str
    error_msg: str
    error_detail: str | None = None
    api_request_id: str | None = Field(default=None, description="X-Request-Id of the failing API call.")
    retryable: bool
    maybe_created: bool = Field(
        default=False,
        description="True when the call's response was lost after it was sent: the cloud may have created the "
        "job anyway.",
    )


class SnapshotResult(BaseModel):
    """Exactly one per request message, on its reply_to queue or the result/error queue."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="SnapshotResult")

    request_id: str
    correlation_id: str | None = None
    project_id: str | None = Field(description="None when the message was unreadable.")
    status: ResultStatus
    finished_at: datetime
    jobs: tuple[JobEntry, ...] = ()
    errors: tuple[ResultError, ...] = ()
    truncated: bool = Field(
        default=False,
        description="True when the worker cut the result to fit its size limit: some error texts end with "
        "'…[truncated]', errors of one kind may be merged into one entry, and an invalid result may echo only "
        "the first of the desktop IDs it read. Sent only when true.",
    )

    @field_validator("finished_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("finished_at must carry a timezone")
        return value.astimezone(UTC)

    @field_serializer("finished_at")
    def _rfc3339(self, value: datetime) -> str:
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DesktopCompletion(BaseModel):
    """How one desktop's snapshot ended, as its job's sub-job told (or, for a desktop answered from the idempotency
    record, ``job_id`` ``reconciled:<snapshot_id>``, as the snapshot listing told)."""

    model_config = _FROZEN

    desktop_id: str
    job_id: str
    outcome: DesktopOutcome = Field(
        description="succeeded / failed: the sub-job ended so (SUCCESS or COMPLETE / FAIL or FAILED), or, for a "
        "reconciled desktop, its snapshot is listed create_success / create_failed; unknown: no final status within "
        "TRACK_DEADLINE_S, the API no longer knows the job, or the snapshot is not listed. Never a guess."
    )
    sub_job_status: str | None = Field(description="The sub-job's status as the API last gave it (None: not seen).")
    error_code: str | None = None
    fail_reason: str | None = None
    finished_at: datetime = Field(description="The job's end_time when the API gave one, else when it was seen.")

    @field_serializer("finished_at")
    def _rfc3339(self, value: datetime) -> str:
        return _rfc3339(value)


class SnapshotCompletion(BaseModel):
    """One per request with at least one job, once every desktop of its jobs has a final outcome.

    Sent after the request's :class:`SnapshotResult`, to its reply_to (AMQP ``type`` ``snapworker.completion``)
    or the completion queue. Desktops that got no job are in the result's errors and not repeated here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="SnapshotCompletion")

    request_id: str
    correlation_id: str | None = None
    project_id: str
    status: CompletionStatus = Field(
        description="unknown if any desktop's outcome is unknown; else succeeded (all succeeded), failed (all "
        "failed) or partial."
    )
    finished_at: datetime
    desktops: tuple[DesktopCompletion, ...] = Field(min_length=1)

    @field_serializer("finished_at")
    def _rfc3339(self, value: datetime) -> str:
        return _rfc3339(value)
