"""``snapworker check``'s rows for what ``run`` needs besides the broker and the API: Redis and the accounts file.

Each function returns the rows (:class:`~snapworker.tools.check.Finding`) of one thing, none when the setting
that needs it is unset. They only read: nothing is written to Redis, nothing is sent with the accounts'
credentials.
"""

from __future__ import annotations

import re

from snapworker.errors import ConfigError
from snapworker.settings import Settings, redact_url
from snapworker.tools.findings import Finding

__all__ = ["HUAWEI_PROJECT_ID", "check_accounts", "check_redis"]

#: A Huawei Cloud project ID: 32 lowercase hex characters (IAM's format; the API refuses anything else).
HUAWEI_PROJECT_ID = re.compile(r"[0-9a-f]{32}")
#: Seconds to wait for Redis to connect and answer: check must not hang on a blackholed address.
REDIS_TIMEOUT_S = 3.0


async def check_redis(settings: Settings) -> list[Finding]:
    """With REDIS_URL set: the redis package is installed (the ``[redis]`` extra) and the server answers PING."""
    if settings.redis_url is None:
        return []
    url = redact_url(settings.redis_url.get_secret_value())
    try:  # lazily, as the worker does: snapworker runs without the extra while REDIS_URL is unset
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError
    except ImportError:
        return [
            Finding(
                "FAIL",
                "redis",
                f"SNAPWORKER_REDIS_URL is set ({url}) but the redis package is not installed: "
                f"pip install 'snapworker[redis]'",
            )
        ]
    client = Redis.from_url(
        settings.redis_url.get_secret_value(),
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        return [Finding("FAIL", "redis", f"Redis at {url} does not answer PING ({reason}): check SNAPWORKER_REDIS_URL")]
    finally:
        await client.aclose()
    return [Finding("ok", "redis", f"Redis at {url} answers PING (the fleet's rate budget and idempotency records)")]


def check_accounts(settings: Settings) -> list[Finding]:
    """With ACCOUNTS_FILE set: it loads as the worker loads it, and every project ID in it is a Huawei project
    ID (a malformed one matches no real project: its requests would go to the default account, or fail)."""
    if not settings.accounts_file:
        return []
    from snapworker.cloud.accounts import load_accounts  # only when there is a file to read

    try:
        accounts, default = load_accounts(settings.accounts_file, settings)
    except ConfigError as exc:
        return [Finding("FAIL", "accounts", str(exc))]
    findings = []
    for account in accounts:
        bad = sorted(p for p in account.projects if not HUAWEI_PROJECT_ID.fullmatch(p))
        if bad:
            shown = ", ".join(repr(p) for p in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            findings.append(
                Finding(
                    "FAIL",
                    "accounts",
                    f"account {account.name!r} in {settings.accounts_file}: {shown} "
                    f"{'is not a project ID' if len(bad) == 1 else 'are not project IDs'} (Huawei project IDs are "
                    f"32 lowercase hex characters, as the console shows them)",
                )
            )
    if not findings:
        projects = sum(len(a.projects) for a in accounts)
        fallback = "a default account for the rest" if default is not None else "no default: other projects fail"
        findings.append(
            Finding("ok", "accounts", f"{len(accounts)} accounts, {projects} project IDs well formed; {fallback}")
        )
    return findings
