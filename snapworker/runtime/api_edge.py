"""The worker's edge to the Workspace API: one client and rate budgets per credential, closed with the worker.

Built once per run: one :class:`~snapworker.cloud.client.WorkspaceClient` (its batch-create budget and its read
budget each shared by a fleet through Redis when REDIS_URL is set), or, with ACCOUNTS_FILE, one per account behind an
:class:`~snapworker.cloud.accounts.AccountRouter` that routes by project. Every client reports a refused credential
to ``credential_watch`` (the worker pauses, see :mod:`.credential_pause`).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from snapworker.cloud.credential import CredentialWatch
from snapworker.runtime.call_parts import SnapshotApi
from snapworker.runtime.supervisor import Supervisor
from snapworker.settings import Settings

if TYPE_CHECKING:
    from snapworker.ops.metrics import ApiMetrics

__all__ = ["open_api"]


def open_api(
    settings: Settings,
    stack: AsyncExitStack,
    *,
    observer: ApiMetrics | None,
    loops: Supervisor,
    credential_watch: CredentialWatch,
) -> SnapshotApi:
    """The API the worker calls, its closing pushed on ``stack``."""
    if settings.accounts_file:
        from snapworker.cloud.accounts import AccountRouter

        # several accounts or regions: a client and a rate budget per account, routed by project
        router = AccountRouter.from_settings(
            settings, observer=observer, loops=loops, credential_watch=credential_watch
        )
        stack.push_async_callback(router.close)
        return router
    from snapworker.cloud.client import WorkspaceClient
    from snapworker.cloud.read_budget import build_read_limiter
    from snapworker.cloud.shared_limiter import build_limiter

    client = WorkspaceClient(
        settings,
        limiter=build_limiter(settings, loops=loops),
        read_limiter=build_read_limiter(settings, loops=loops),  # closed by the client
        observer=observer,
        credential_watch=credential_watch,
    )
    stack.push_async_callback(client.limiter.close)
    stack.push_async_callback(client.close)
    return client
