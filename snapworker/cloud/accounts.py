"""Several accounts or regions in one worker: ACCOUNTS_FILE maps project IDs to endpoint, credential and budget.

A project ID belongs to one region and one account, and Huawei's gateway counts calls per credential. So each
account gets its own API client *and its own rate limiter* (its own AIMD budget: a throttle of one account never
slows another), and every call is routed by its project ID. The file is TOML::

    [default]                      # optional: projects no account lists; without it they fail (not retryable)
    region = "cn-north-4"
    auth_token = "..."             # or access_key + secret_key (+ security_token)

    [[account]]
    name = "europe"
    projects = ["0a1b...", "0c2d..."]
    endpoint = "https://workspace.eu-west-101.myhuaweicloud.eu"   # or region = "eu-west-101"
    access_key = "..."
    secret_key = "..."
    rate_limit = 1.0               # optional: RATE_LIMIT / RATE_BURST of this credential (default: the settings')
    read_rate_limit = 3.0          # optional: READ_RATE_LIMIT / READ_RATE_BURST of this credential (the same)

Each account is the worker's Settings with these fields replaced, validated like them (empty secrets, two kinds
of credentials, ...). The worker's sender still asks one limiter for a call before it cuts a batch (late binding):
that gate admits the sum of the accounts' rates; the call then waits for its own account's limiter. Reads go
through the project's account too, under that account's read budget: snapshot listings (reconciliation) and
job reads (tracking: :class:`~snapworker.cloud.jobs.JobReader` over the router, by :meth:`AccountRouter.client_for`).
With REDIS_URL each account's budgets (batch-create's and the reads') are shared by the fleet, keyed by the
account's credential.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from snapworker.cloud.client import ClientObserver, WorkspaceClient
from snapworker.cloud.credential import CredentialWatch
from snapworker.cloud.lease import CallLease
from snapworker.cloud.limiter import Grant, Limiter, RateLimiter
from snapworker.cloud.snapshots import SnapshotReader
from snapworker.domain.jobs import CreatedJob
from snapworker.domain.keys import MergeKey
from snapworker.domain.snapshots import SnapshotView
from snapworker.errors import ApiError, ConfigError
from snapworker.settings import Settings

if TYPE_CHECKING:
    from snapworker.cloud.shared_limiter import Loops

__all__ = ["Account", "AccountRouter", "NoAccountForProject", "load_accounts"]

_FIELDS = {
    "region",
    "endpoint",
    "auth_token",
    "auth_token_file",
    "access_key",
    "secret_key",
    "security_token",
    "rate_limit",
    "rate_burst",
    "read_rate_limit",
    "read_rate_burst",
}


_CREDENTIAL_FIELDS = {"auth_token", "auth_token_file", "access_key", "secret_key", "security_token"}


class NoAccountForProject(ApiError):
    """The accounts file names no account for the project and has no default: nothing was sent."""

    error_code = "SNAPWORKER.NO_ACCOUNT"


@dataclass(frozen=True, slots=True)
class Account:
    """One credential and endpoint: ``settings`` are the worker's with the account's fields in place."""

    name: str
    projects: frozenset[str]
    settings: Settings


def _account_settings(base: Settings, name: str, table: Mapping[str, Any], where: str) -> Settings:
    unknown = set(table) - _FIELDS - {"name", "projects"}
    if unknown:
        raise ConfigError(f"{where}: account {name!r} has unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
    values: dict[str, Any] = {
        # the base's credentials never leak into an account that sets its own (nor the reverse)
        **base.model_dump(exclude=_CREDENTIAL_FIELDS | {"api_url"}),
        "api_proxy": base.api_proxy,
        "amqp_url": base.amqp_url,
        "redis_url": base.redis_url,
        "accounts_file": "",
    }
    for key in _FIELDS - {"endpoint"}:
        if key in table:
            values[key] = table[key]
    values["api_url"] = table.get("endpoint", "")
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'account'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"{where}: account {name!r}: {problems}") from exc


def load_accounts(path: str | Path, base: Settings) -> tuple[list[Account], Account | None]:
    """The accounts of the TOML file at ``path`` and its default (or None); ConfigError naming what is wrong."""
    where = f"ACCOUNTS_FILE {str(path)!r}"
    try:
        data = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    extra = set(data) - {"default", "account"}
    if extra:
        raise ConfigError(f"{where}: unknown tables {sorted(extra)}; expected [default] and [[account]]")
    default = None
    if "default" in data:
        default = Account("default", frozenset(), _account_settings(base, "default", data["default"], where))
    accounts: list[Account] = []
    owner: dict[str, str] = {}
    for n, table in enumerate(data.get("account", []), 1):
        name = str(table.get("name", f"#{n}"))
        projects = table.get("projects")
        if not isinstance(projects, list) or not projects or not all(isinstance(p, str) and p for p in projects):
            raise ConfigError(f'{where}: account {name!r} needs projects = ["<project id>", ...]')
        for project in projects:
            if project in owner:
                raise ConfigError(f"{where}: project {project!r} is in accounts {owner[project]!r} and {name!r}")
            owner[project] = name
        accounts.append(Account(name, frozenset(projects), _account_settings(base, name, table, where)))
    if not accounts and default is None:
        raise ConfigError(f"{where}: no [[account]] and no [default]: nothing to call the API with")
    return accounts, default


class AccountRouter:
    """The worker's API (:class:`~snapworker.runtime.call_parts.SnapshotApi`) over several accounts, routed by project.

    ``limiter`` is the gate the sender asks before cutting a batch: the sum of the accounts' rates and bursts,
    MAX_CONCURRENCY calls in flight. A call then waits for its account's own limiter, which its throttles cut.
    """

    def __init__(
        self,
        settings: Settings,
        accounts: Sequence[Account],
        default: Account | None,
        *,
        clients: Mapping[str, WorkspaceClient] | None = None,
        observer: ClientObserver | None = None,
        loops: Loops | None = None,
        credential_watch: CredentialWatch | None = None,
    ) -> None:
        every = [*accounts, *([default] if default is not None else [])]
        self._clients: dict[str, WorkspaceClient] = dict(clients or {})
        if not self._clients:
            from snapworker.cloud.read_budget import build_read_limiter
            from snapworker.cloud.shared_limiter import build_limiter

            for account in every:
                self._clients[account.name] = WorkspaceClient(
                    account.settings,
                    limiter=build_limiter(account.settings, loops=loops),
                    read_limiter=build_read_limiter(account.settings, loops=loops),
                    observer=observer,
                    credential_watch=credential_watch,
                    who=account.name,
                )
        # a project of each account, to verify its credential with (the default's: PROJECT_ID, if set)
        self.probe_projects: dict[str, str | None] = {
            a.name: min(a.projects) if a.projects else (settings.project_id or None) for a in every
        }
        self._readers = {name: SnapshotReader(client) for name, client in self._clients.items()}
        self._route = {project: account.name for account in accounts for project in account.projects}
        self._default = default.name if default is not None else None
        self._gate = RateLimiter(
            sum(a.settings.rate_limit for a in every),
            sum(a.settings.rate_burst for a in every),
            settings.max_concurrency,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        observer: ClientObserver | None = None,
        loops: Loops | None = None,
        credential_watch: CredentialWatch | None = None,
    ) -> AccountRouter:
        accounts, default = load_accounts(settings.accounts_file, settings)
        return cls(settings, accounts, default, observer=observer, loops=loops, credential_watch=credential_watch)

    @property
    def clients(self) -> Mapping[str, WorkspaceClient]:
        """Each account's client, by account name."""
        return self._clients

    @property
    def limiter(self) -> Limiter:
        return self._gate

    def client_for(self, project_id: str) -> WorkspaceClient:
        """The client of the project's account; NoAccountForProject when none serves it."""
        return self._clients[self._account_of(project_id)]

    def _account_of(self, project_id: str) -> str:
        name = self._route.get(project_id, self._default)
        if name is None:
            raise NoAccountForProject(
                f"no account in ACCOUNTS_FILE serves project {project_id!r}, and there is no [default]"
            )
        return name

    def read_limiter(self, project_id: str) -> Limiter:
        """The read budget of the project's account (its job reads and snapshot listings share it)."""
        return self.client_for(project_id).read_limiter

    async def list_snapshots(
        self, project_id: str, desktop_ids: Sequence[str], *, since: float, grant: Grant | None = None
    ) -> dict[str, list[SnapshotView]]:
        """The snapshot listing through the project's account (see SnapshotReader.list_snapshots)."""
        reader = self._readers[self._account_of(project_id)]
        return await reader.list_snapshots(project_id, desktop_ids, since=since, grant=grant)

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
    ) -> CreatedJob:
        """The call through the project's account: its limiter, credential and endpoint."""
        try:
            client = self.client_for(key.project_id)
            # the gate's grant is not the account's: the call waits for its own account's budget
            return await client.batch_create(
                key, desktop_ids, deadline=deadline, marker=marker, max_tries=max_tries, lease=lease
            )
        finally:
            if grant is not None:
                self._gate.release()

    async def close(self) -> None:
        """Close every account's client and limiter, and the gate."""
        for client in self._clients.values():
            await client.close()
            await client.limiter.close()
        await self._gate.close()
