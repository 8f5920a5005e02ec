"""``snapworker check``: is this setup able to work? Everything ``snapworker run`` needs, one row each.

Each row (:class:`Finding`) is ``ok``, ``WARN`` (worth knowing, not a fault) or ``FAIL`` (``run`` would not work),
with a plain message; ``check`` exits 1 on any FAIL. :func:`run_checks` lists the checks in order (add a row
there): the settings, Redis and the accounts file (:mod:`snapworker.tools.check_setup`), the broker and its
queues (the request, result, error and dead-letter queues; dead letters waiting; a fleet that wastes calls; the
tracking and completion queues), and the Workspace API.

The API check asks for a job that does not exist, which is harmless and answers the questions that matter: a 404
from the service means the endpoint is reachable and the credentials were accepted; a 401 means they were not; no
answer means the endpoint is unreachable. Nothing is created anywhere, unless ``--declare`` is given (then the
queues are declared exactly as the worker declares them).
"""

from __future__ import annotations

import uuid

from snapworker.amqp.fleet import fleet_warning
from snapworker.cloud.client import WorkspaceClient
from snapworker.errors import (
    ApiAuthError,
    ApiCredentialRefused,
    ApiError,
    ApiResponseLost,
    ApiResponseTimeout,
    ApiStatusError,
    ApiThrottled,
    ApiTransportError,
    BrokerError,
    ConfigError,
)
from snapworker.settings import Settings, redact_url
from snapworker.tools.broker import BrokerTools, QueueInfo
from snapworker.tools.check_setup import check_accounts, check_redis
from snapworker.tools.findings import Finding, Level
from snapworker.tracking.topology import tracking_queues

__all__ = [
    "Finding",
    "Level",
    "check_account_credentials",
    "check_api",
    "check_broker",
    "describe_settings",
    "run_checks",
]

#: Used when no --project is given: any well-formed project ID serves to test credentials.
PLACEHOLDER_PROJECT = "0" * 32


async def run_checks(settings: Settings, *, declare: bool = False, project_id: str | None = None) -> list[Finding]:
    """Every row of ``snapworker check``, in the order shown."""
    findings = describe_settings(settings)
    findings += await check_redis(settings)
    findings += check_accounts(settings)
    findings += await check_broker(settings, declare=declare)
    findings.append(await check_api(settings, project_id=project_id))
    findings += await check_account_credentials(settings)
    return findings


def describe_settings(settings: Settings) -> list[Finding]:
    """The settings loaded (they are valid, or loading would have failed) and whether credentials are set."""
    auth = {"token": "IAM token", "aksk": "AK/SK signing", "none": "no credentials"}[settings.auth_mode]
    findings = [
        Finding(
            "ok",
            "settings",
            f"broker {redact_url(settings.amqp_url.get_secret_value())}, API {settings.api_url} ({auth})",
        )
    ]
    if settings.auth_mode == "none":
        findings.append(Finding("FAIL", "settings", f"no credentials: {_credential_settings(settings)}"))
    return findings


async def check_broker(settings: Settings, *, declare: bool = False) -> list[Finding]:
    """Connect, optionally declare the topology, and look at every queue the worker uses."""
    findings: list[Finding] = []
    queues = (
        ("request queue", settings.request_queue),
        ("result queue", settings.result_queue),
        ("error queue", settings.error_queue),
        ("dead-letter queue", settings.dead_letter_queue),
    )
    try:
        async with BrokerTools(settings, connection_name="snapworker-check") as broker:
            findings.append(Finding("ok", "broker", "connected"))
            if declare:
                try:
                    await broker.declare_topology()
                except ConfigError as exc:
                    findings.append(Finding("FAIL", "broker", str(exc)))
                else:
                    findings.append(Finding("ok", "broker", "declared the queues"))
            for role, name in queues:
                info = await broker.queue_info(name)
                if info is None:
                    hint = "start the worker (it declares its queues) or run `snapworker check --declare`"
                    findings.append(Finding("FAIL", "queue", f"{role} {name!r} does not exist: {hint}"))
                    continue
                text = f"{role} {name!r}: {info.messages} messages, {info.consumers} consumers"
                findings.append(Finding("ok", "queue", text))
                if role == "request queue":
                    findings += _request_queue_rows(settings, info)
                if role == "dead-letter queue" and info.messages:
                    findings.append(_dead_letters_row(settings, info))
            findings += await _tracking_rows(settings, broker)
    except BrokerError as exc:
        findings.append(Finding("FAIL", "broker", str(exc)))
    return findings


def _request_queue_rows(settings: Settings, info: QueueInfo) -> list[Finding]:
    if info.consumers == 0:
        return [Finding("WARN", "queue", f"no worker consumes {info.name!r} right now")]
    # every consumer of the request queue is a worker (or, partitioned, a worker's router)
    warning = fleet_warning(info.consumers, settings)
    return [Finding("WARN", "fleet", warning)] if warning else []


def _dead_letters_row(settings: Settings, info: QueueInfo) -> Finding:
    return Finding(
        "WARN",
        "queue",
        f"{info.messages} dead letters wait in {info.name!r}: `snapworker replay --dry-run` lists them with their "
        f"reason; once the cause is fixed, `snapworker replay` sends them back to {settings.request_queue!r}",
    )


async def _tracking_rows(settings: Settings, broker: BrokerTools) -> list[Finding]:
    """The tracking queue (and its wait queues) and the completion queue: there, or declared by the first worker;
    messages that nobody reads."""
    if not settings.track_jobs:
        return [Finding("ok", "tracking", "job tracking is off (SNAPWORKER_TRACK_JOBS=false): no completions")]
    findings: list[Finding] = []
    names = [name for name in tracking_queues(settings) if name != settings.completion_queue]
    infos = {name: await broker.queue_info(name) for name in names}
    missing = [name for name, info in infos.items() if info is None]
    tracking = infos.get(settings.tracking_queue)
    if tracking is None:
        text = f"tracking queue {settings.tracking_queue!r} does not exist yet: the first worker declares it"
    else:
        waiting = sum(info.messages for name, info in infos.items() if info is not None and name != tracking.name)
        text = (
            f"tracking queue {tracking.name!r}: {tracking.messages} messages, {tracking.consumers} consumers; "
            f"{len(names) - 1} wait queues hold {waiting} jobs between polls"
        )
        if missing:
            text += f" ({len(missing)} not declared yet: the first worker declares them)"
    findings.append(Finding("ok", "tracking", text))
    if tracking is not None and tracking.messages and not tracking.consumers:
        findings.append(
            Finding(
                "WARN",
                "tracking",
                f"{tracking.messages} jobs wait in {tracking.name!r} and no worker follows them: start a worker "
                f"(with TRACK_JOBS on), or their completions come late",
            )
        )
    findings += await _completion_rows(settings, broker)
    return findings


async def _completion_rows(settings: Settings, broker: BrokerTools) -> list[Finding]:
    name = settings.completion_queue
    if not name:
        return [
            Finding(
                "ok",
                "tracking",
                "completion queue: not set: completions only to reply_to (SNAPWORKER_COMPLETION_QUEUE names one "
                "for requests without reply_to)",
            )
        ]
    info = await broker.queue_info(name)
    if info is None:
        text = f"completion queue {name!r} does not exist yet: the first worker declares it"
    else:
        text = f"completion queue {name!r}: {info.messages} messages, {info.consumers} consumers"
    problems = await broker.completion_queue_problems()
    return [Finding("ok", "tracking", text), *(Finding("WARN", "tracking", problem) for problem in problems)]


async def check_api(settings: Settings, *, project_id: str | None = None) -> Finding:
    """Query a job that does not exist, once (no retries: the answer itself is what we want), in ``project_id``,
    else SNAPWORKER_PROJECT_ID, else a made-up project (enough to tell whether the gateway accepts the credential)."""
    project_id = project_id or settings.project_id or None
    project = project_id or PLACEHOLDER_PROJECT
    job_id = f"snapworker-check-{uuid.uuid4().hex[:12]}"
    once = settings.model_copy(update={"retry_max_tries": 1})
    try:
        async with WorkspaceClient(once) as api:
            await api.get_job(project, job_id)
    except ApiError as exc:
        return _classify(settings, exc, project_given=project_id is not None)
    return Finding("ok", "api", f"reachable and authenticated at {settings.api_url}")


def _classify(settings: Settings, exc: ApiError, *, project_given: bool) -> Finding:
    url = settings.api_url
    if isinstance(exc, ApiResponseTimeout):
        return Finding("FAIL", "api", f"no answer from {url} within READ_TIMEOUT_S: {exc}")
    if isinstance(exc, ApiResponseLost):
        return Finding("FAIL", "api", f"the connection to {url} broke before an answer came: {exc}")
    if isinstance(exc, ApiTransportError):
        return Finding("FAIL", "api", f"unreachable: {exc} (check SNAPWORKER_API_URL / SNAPWORKER_REGION)")
    assert isinstance(exc, ApiStatusError)
    answer = f"{exc.http_status} {exc.error_code}: {exc}"
    gateway = exc.error_code.startswith("APIG.")  # said by the API gateway, not the Workspace service
    if isinstance(exc, ApiCredentialRefused):
        return Finding("FAIL", "api", f"credentials refused ({answer}): {_credential_settings(settings)}")
    if isinstance(exc, ApiAuthError):
        if project_given:
            return Finding("FAIL", "api", f"authenticated, but not allowed for this project ({answer})")
        return Finding("WARN", "api", f"authenticated; pass --project YOUR_PROJECT_ID to check access ({answer})")
    if isinstance(exc, ApiThrottled):
        return Finding("ok", "api", f"reachable and authenticated, but throttled right now ({answer})")
    if exc.http_status == 404 and gateway:
        return Finding("FAIL", "api", f"{url} is not the Workspace API ({answer}): check SNAPWORKER_API_URL")
    if exc.http_status is not None and 400 <= exc.http_status < 500 and not gateway:
        # The service itself refused the made-up job: the request got past authentication.
        return Finding("ok", "api", f"reachable and authenticated at {url} (a made-up job: {answer})")
    return Finding("FAIL", "api", f"unexpected answer from {url}: {answer}")


async def check_account_credentials(settings: Settings) -> list[Finding]:
    """With ACCOUNTS_FILE: one row per account, its credential verified with one read in one of its projects (the
    read a worker makes at start, :mod:`snapworker.cloud.probe`)."""
    if not settings.accounts_file:
        return []
    from snapworker.cloud.accounts import AccountRouter
    from snapworker.cloud.probe import check_credentials

    try:
        router = AccountRouter.from_settings(settings.model_copy(update={"retry_max_tries": 1}))
    except ConfigError:
        return []  # the accounts row says what is wrong with the file
    try:
        checks = await check_credentials(router, settings)
    finally:
        await router.close()
    levels: dict[str, Level] = {"ok": "ok", "refused": "FAIL", "unknown": "WARN", "skipped": "WARN"}
    return [
        Finding(levels[c.status], "account", f"{c.who!r}: credential {c.status} (project {c.project_id}): {c.detail}")
        for c in checks
    ]


def _credential_settings(settings: Settings) -> str:
    if settings.auth_token_file:
        return (
            f"check the token in SNAPWORKER_AUTH_TOKEN_FILE {settings.auth_token_file!r} (IAM tokens expire after 24 h)"
        )
    if settings.auth_mode == "token":
        return "check SNAPWORKER_AUTH_TOKEN (IAM tokens expire after 24 h)"
    if settings.auth_mode == "aksk":
        return "check SNAPWORKER_ACCESS_KEY and SNAPWORKER_SECRET_KEY"
    return "set SNAPWORKER_AUTH_TOKEN, or SNAPWORKER_ACCESS_KEY and SNAPWORKER_SECRET_KEY"
