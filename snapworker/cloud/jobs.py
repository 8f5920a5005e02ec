"""Reading jobs: ``GET workspace-jobs/{job_id}`` and its ``workspace-sub-jobs`` pages, under a read budget.

Reads reuse the :class:`~snapworker.cloud.client.WorkspaceClient`'s session, authentication, retries and error
translation, but every try waits for the client's read budget (``READ_RATE_LIMIT`` / ``READ_RATE_BURST``), so
following jobs never spends a batch-create call. With several accounts (ACCOUNTS_FILE), each job is read with
the client of its project's account: that account's endpoint, credential and read budget. The API's documents
become :class:`JobView` values here; what the tracking makes of them is decided in :mod:`snapworker.tracking.state`.

Statuses, from the fact sheet: SUCCESS and COMPLETE end well, FAIL and FAILED end badly; anything else (RUNNING,
WAITING, a status nobody documented) is still running. The sub-job list's shape is not documented: the first
list found under ``jobs``, ``sub_jobs`` or ``items`` is read, and its total under ``total_count``, ``count`` or
``sub_jobs_total``.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol
from urllib.parse import quote, urlencode

from snapworker.cloud.client import WorkspaceClient
from snapworker.cloud.limiter import Limiter
from snapworker.cloud.snapshots import SharedListings
from snapworker.domain.jobs import JobView, SubJobView, classify
from snapworker.errors import ApiStatusError

__all__ = ["SUB_JOB_PAGE", "ClientsByProject", "JobReader", "job_not_found"]

log = logging.getLogger("snapworker.cloud.jobs")

#: Sub-jobs asked for per page of ``workspace-sub-jobs``.
SUB_JOB_PAGE: Final = 100


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _sub_jobs(items: object) -> dict[str, SubJobView]:
    found: dict[str, SubJobView] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        entities = item.get("entities")
        desktop_id = _text(entities.get("desktop_id")) if isinstance(entities, dict) else None
        if desktop_id is None:
            continue
        found[desktop_id] = SubJobView(
            desktop_id, _text(item.get("status")), _text(item.get("error_code")), _text(item.get("fail_reason"))
        )
    return found


def _first(doc: dict[str, Any], *names: str) -> Any:
    return next((doc[name] for name in names if doc.get(name) is not None), None)


class ClientsByProject(Protocol):
    """Several credentials, one client each (:class:`~snapworker.cloud.accounts.AccountRouter`)."""

    def client_for(self, project_id: str) -> WorkspaceClient:
        """The client of the project's account; an ApiError when none serves the project."""
        ...


class JobReader:
    """Reads jobs through ``api``: one client, or the client of each job's project (``api.client_for``). Every
    try waits for ``limiter`` if given, else for that client's read budget (READ_RATE_LIMIT / READ_RATE_BURST,
    which the snapshot listings of reconciliation share). ``reads`` counts the GET calls made (tries, not
    retries)."""

    def __init__(self, api: WorkspaceClient | ClientsByProject, *, limiter: Limiter | None = None) -> None:
        self._api = api
        self._limiter = limiter
        self.reads = 0
        # desktops answered from reconciliation have no job: tracking lists their snapshots here (tracker_for)
        self.listings: SharedListings | None = None

    def _client(self, project_id: str) -> WorkspaceClient:
        return self._api if isinstance(self._api, WorkspaceClient) else self._api.client_for(project_id)

    async def read(self, project_id: str, job_id: str) -> JobView:
        """One look at the job. Once it has ended and its document lists fewer sub-jobs than it has, the
        remaining ``workspace-sub-jobs`` pages are read too (while it runs, the first page is enough: the
        outcome of a desktop is final only once its job ends, so the pages are read once). Raises the
        :mod:`snapworker.errors` ``ApiError`` of the first read that failed (404 WKS.0202: no such job), or the
        one ``client_for`` raises for a project no account serves (NoAccountForProject: nothing sent, no read
        counted)."""
        client = self._client(project_id)
        path = f"/v2/{quote(project_id, safe='')}/workspace-jobs/{quote(job_id, safe='')}"
        self.reads += 1
        doc = await client.get_json(path, project_id, limiter=self._limiter)
        sub_jobs = _sub_jobs(doc.get("sub_jobs"))
        listed = len(doc["sub_jobs"]) if isinstance(doc.get("sub_jobs"), list) else 0
        total = doc.get("sub_jobs_total")
        total = total if isinstance(total, int) else listed
        status = _text(doc.get("status"))
        if classify(status) != "running":
            while listed < total:
                page, page_total = await self._page(client, project_id, job_id, listed)
                if not page:
                    break  # the list ended early: what is missing stays missing
                sub_jobs.update(_sub_jobs(page))
                listed += len(page)
                total = page_total if page_total is not None else total
        return JobView(
            job_id=job_id,
            status=status,
            end_time=_text(doc.get("end_time")),
            error_code=_text(doc.get("job_error_code")),
            fail_reason=_text(doc.get("fail_reason")),
            sub_jobs=sub_jobs,
            complete=listed >= total,
        )

    async def _page(
        self, client: WorkspaceClient, project_id: str, job_id: str, offset: int
    ) -> tuple[list[Any], int | None]:
        query = urlencode({"job_id": job_id, "limit": SUB_JOB_PAGE, "offset": offset})
        self.reads += 1
        doc = await client.get_json(
            f"/v2/{quote(project_id, safe='')}/workspace-sub-jobs?{query}", project_id, limiter=self._limiter
        )
        items = _first(doc, "jobs", "sub_jobs", "items")
        total = _first(doc, "total_count", "count", "sub_jobs_total")
        return (items if isinstance(items, list) else []), (total if isinstance(total, int) else None)


def job_not_found(error: Exception) -> bool:
    """Whether ``error`` says the API does not know the job (expired or never there): 404."""
    return isinstance(error, ApiStatusError) and error.http_status == 404
