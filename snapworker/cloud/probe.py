"""Verifying credentials with one cheap authenticated read: at the worker's start, and in ``snapworker check``.

The read is the first snapshot of a project the credential serves (``GET /v2/{project_id}/snapshots?limit=1``,
through the read budget): SNAPWORKER_PROJECT_ID, or a project of each account of ACCOUNTS_FILE. Workspace has no
read without a project, so without one the credential is not verified at start: the first request's call tries
it (and a refusal then pauses the worker just the same).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from snapworker.cloud.accounts import AccountRouter
from snapworker.cloud.client import WorkspaceClient
from snapworker.errors import ApiCredentialRefused, ApiError
from snapworker.settings import Settings

__all__ = ["CredentialCheck", "check_credentials", "verify_at_start"]

log = logging.getLogger("snapworker.worker")


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """What one credential's read said: ``ok`` (accepted), ``refused``, ``unknown`` (the API could not tell), or
    ``skipped`` (no project to read in)."""

    who: str
    project_id: str | None
    status: Literal["ok", "refused", "unknown", "skipped"]
    detail: str


def _credentials(api: object, settings: Settings) -> list[tuple[str, WorkspaceClient, str | None]]:
    if isinstance(api, AccountRouter):
        return [(who, client, api.probe_projects.get(who)) for who, client in api.clients.items()]
    if isinstance(api, WorkspaceClient):
        return [("default", api, settings.project_id or None)]
    return []  # a test double: nothing to verify


async def check_credentials(api: object, settings: Settings) -> list[CredentialCheck]:
    """One read per credential of ``api`` (a WorkspaceClient or an AccountRouter); never raises an ApiError."""
    checks = []
    for who, client, project_id in _credentials(api, settings):
        if project_id is None:
            checks.append(CredentialCheck(who, None, "skipped", "no project to read in: set SNAPWORKER_PROJECT_ID"))
            continue
        try:
            await client.verify_credential(project_id)
        except ApiCredentialRefused as exc:
            checks.append(CredentialCheck(who, project_id, "refused", f"{exc.http_status} {exc.error_code}: {exc}"))
        except ApiError as exc:
            checks.append(CredentialCheck(who, project_id, "unknown", f"{exc.error_code}: {exc}"))
        else:
            checks.append(CredentialCheck(who, project_id, "ok", "accepted"))
    return checks


async def verify_at_start(api: object, settings: Settings) -> None:
    """Verify every credential once and log what was found. A refused one has been reported to the client's
    credential watch already: the worker starts paused."""
    for check in await check_credentials(api, settings):
        if check.status == "ok":
            log.info("credential %r verified (project %s)", check.who, check.project_id)
        elif check.status == "skipped":
            log.info(
                "credential %r not verified at start (set SNAPWORKER_PROJECT_ID): the first request's call tries it",
                check.who,
            )
        elif check.status == "unknown":
            log.warning("credential %r could not be verified at start (%s): starting anyway", check.who, check.detail)
