"""Which snapshot did a call make? The marker a call writes, the listing's snapshots as values, and the verdict.

A call whose answer was lost (a crash, a dropped connection, a timeout) may or may not have created snapshots.
Before its desktops are ever sent again, the API's snapshot listing is read and each desktop gets a
:data:`Verdict`, decided here without I/O:

- **The call carried a marker** (:func:`marker`): when the request gave no description for a disk the call
  snapshots, the call writes ``snapworker:<attempt id>`` there. The API keeps it as the snapshot's description, so
  a snapshot with one of the attempt's markers was made by that attempt and no other: :class:`Created`. None: the
  attempt made nothing, :class:`Absent` (a ``create_failed`` snapshot counts as none: the desktop is sent again).
- **It carried none** (the request gave its own description on every disk it snapshots; a user's text is never
  changed): nothing written by the attempt tells its snapshot from another's with the same name (another request
  of the same desktop and name, or a person's). A snapshot named by the documented rule (desktop name + given name
  + timestamp) created since the attempt's intent is then :class:`Unknown` (answered ``maybe_created``, never
  guessed); no such snapshot is :class:`Absent`.

Clock skew: without a marker, "since the intent" allows ``SKEW_S`` between this host's clock and the API's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from snapworker.contract.models import JobEntry, ResultError
from snapworker.domain.keys import MergeKey

__all__ = [
    "MARKER_PREFIX",
    "RECONCILED_PREFIX",
    "SKEW_S",
    "Absent",
    "Created",
    "Doubt",
    "Reconciled",
    "SnapshotView",
    "Unknown",
    "Verdict",
    "attribute",
    "given_name",
    "marked_disks",
    "marker",
]

MARKER_PREFIX: Final = "snapworker:"
#: job_id of a desktop found snapshotted: ``reconciled:<snapshot_id>`` (the listing does not say which job).
RECONCILED_PREFIX: Final = "reconciled:"
#: Clock skew allowed between this host (an intent's time) and the API (a snapshot's create_time), unmarked only.
SKEW_S: Final = 300.0
_FAILED = "create_failed"
# The documented name: desktop name + given name + timestamp. The separators and the timestamp's format are not
# documented: any run of separators, and a timestamp of digits with date and time punctuation.
_SEPARATORS = r"[-_ .]*"
_STAMP = r"[0-9][0-9TZ:._ -]*"


def marker(attempt: str) -> str:
    """The description an attempt's calls write on the disks whose description the request left empty."""
    return MARKER_PREFIX + attempt


def marked_disks(key: MergeKey) -> tuple[str, ...]:
    """The batch-create body fields (``system_disk_snapshot``, ``data_disk_snapshot``) that carry the marker:
    those of the disks ``key``'s disk type snapshots (no disk type: the system disk) that have no description."""
    disk_type = key.disk_type or "SYSTEM_DISK"
    fields = []
    if disk_type in ("SYSTEM_DISK", "ALL") and _undescribed(key.system_disk_snapshot):
        fields.append("system_disk_snapshot")
    if disk_type in ("DATA_DISKS", "ALL") and _undescribed(key.data_disk_snapshot):
        fields.append("data_disk_snapshot")
    return tuple(fields)


def _undescribed(info: object) -> bool:
    return info is None or getattr(info, "description", None) is None


@dataclass(frozen=True, slots=True)
class SnapshotView:
    """One snapshot as ``GET /v2/{project_id}/snapshots`` lists it. ``created_at``: POSIX seconds, None if the
    answer had no readable ``create_time``."""

    snapshot_id: str
    snapshot_name: str
    desktop_id: str
    desktop_name: str | None
    is_system_disk: bool | None
    status: str | None
    description: str | None
    created_at: float | None


@dataclass(frozen=True, slots=True)
class Doubt:
    """Why a desktop may have a snapshot already: attempts whose outcome is unknown.

    ``markers``: what those attempts wrote as descriptions (empty: they carried none, see :func:`marked_disks`);
    ``since``: POSIX time of the earliest such intent; ``given_name``: the name the request gives its snapshots.
    """

    markers: frozenset[str]
    since: float
    given_name: str | None


@dataclass(frozen=True, slots=True)
class Created:
    snapshot_id: str


@dataclass(frozen=True, slots=True)
class Absent:
    pass


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: str


Verdict = Created | Absent | Unknown


def attribute(doubt: Doubt, snapshots: list[SnapshotView]) -> Verdict:
    """What the attempts of ``doubt`` made of one desktop, given its listed ``snapshots`` (see the module)."""
    if doubt.markers:
        for snapshot in snapshots:
            if snapshot.description in doubt.markers and snapshot.status != _FAILED:
                return Created(snapshot.snapshot_id)
        return Absent()
    lookalikes = [s for s in snapshots if s.status != _FAILED and _named_like(s, doubt.given_name)]
    for snapshot in lookalikes:
        if snapshot.created_at is None:
            return Unknown(f"snapshot {snapshot.snapshot_id} has no readable create_time")
        if snapshot.created_at >= doubt.since - SKEW_S:
            return Unknown(
                f"snapshot {snapshot.snapshot_id} ({snapshot.snapshot_name!r}) was created since the call, and "
                f"nothing the call wrote tells it from another's: the request gave its own description, so it "
                f"carried no marker"
            )
    return Absent()


def _named_like(snapshot: SnapshotView, given_name: str | None) -> bool:
    """Whether the snapshot's name is what the documented rule makes of ``given_name`` (and its desktop's name,
    when the listing gives it)."""
    head = re.escape(snapshot.desktop_name) + _SEPARATORS if snapshot.desktop_name else ".*"
    given = re.escape(given_name) + _SEPARATORS if given_name else ""
    return re.fullmatch(f"{head}{given}{_STAMP}", snapshot.snapshot_name) is not None


def given_name(key: MergeKey) -> str | None:
    """The name the request gives its snapshots (system disk's first), if any."""
    for info in (key.system_disk_snapshot, key.data_disk_snapshot):
        if info is not None and info.name:
            return info.name
    return None


@dataclass(slots=True)
class Reconciled:
    """The verdict of each desktop asked about, and the result entries they make."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)

    @property
    def absent(self) -> list[str]:
        """Desktops no call made a snapshot of: to be sent (again)."""
        return [d for d, v in self.verdicts.items() if isinstance(v, Absent)]

    def count(self, kind: type[Verdict]) -> int:
        return sum(isinstance(v, kind) for v in self.verdicts.values())

    def entries(self, why: str = "") -> list[JobEntry | ResultError]:
        """Result entries of the created and unknown desktops (the absent ones are to be sent again). ``why``:
        what made the call doubtful, said in the unknown ones' error_msg."""
        out: list[JobEntry | ResultError] = []
        for desktop_id, verdict in self.verdicts.items():
            if isinstance(verdict, Created):
                out.append(JobEntry(job_id=RECONCILED_PREFIX + verdict.snapshot_id, desktop_ids=(desktop_id,)))
            elif isinstance(verdict, Unknown):
                out.append(
                    ResultError(
                        desktop_ids=(desktop_id,),
                        http_status=None,
                        error_code="SNAPWORKER.UNRECONCILED",
                        error_msg=f"a call for this desktop may have created a snapshot, and its snapshots could not "
                        f"tell: {verdict.reason}{f' ({why})' if why else ''}"[:2000],
                        retryable=True,
                        maybe_created=True,
                    )
                )
        return out
