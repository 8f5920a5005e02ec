"""``snapworker check`` covers everything ``run`` needs: each row as a user sees it, through the real CLI in a
subprocess (``python -m snapworker check``), against the real broker, Redis and the simulator.

Each test declares its own queues (no consumer of ours on them unless the test says so, so that the counts are
the test's) and deletes them at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest

from snapworker.amqp.partitioning import request_queues
from snapworker.amqp.topology import declare_topology
from snapworker.settings import Settings
from snapworker.tracking.topology import declare_tracking_topology, tracking_queues
from tests.integration.test_tools import Ran, _env, _snapworker

pytestmark = pytest.mark.broker

GOOD_PROJECT = "0123456789abcdef0123456789abcdef"


@contextlib.asynccontextmanager
async def _declared(settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """Every queue of ``settings`` declared as a worker declares them (tracking ones too when tracking is on), with
    no consumer; a channel to publish with; all deleted at the end."""
    async with await aio_pika.connect(settings.amqp_url.get_secret_value()) as conn:
        channel = await conn.channel()
        names = [settings.result_queue, settings.error_queue, settings.dead_letter_queue]
        names += request_queues(settings.request_queue, settings.partitions)  # partitions and urgent twins too
        try:
            await declare_topology(channel, settings)
            if settings.track_jobs:
                names += tracking_queues(settings)
                await declare_tracking_topology(channel, settings)
            yield channel
        finally:
            cleanup = await conn.channel()
            for name in names:
                await cleanup.queue_delete(name)


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> None:
    for i in range(count):
        await channel.default_exchange.publish(aio_pika.Message(b'{"n": %d}' % i), routing_key=queue)


async def _give_back(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.nack(requeue=True)


def _rows(ran: Ran, level: str, area: str) -> list[str]:
    return [line for line in ran.out.splitlines() if line.startswith(level) and line.split()[1] == area]


def _tracking_env(settings: Settings, **overrides: str) -> dict[str, str]:
    return _env(
        settings,
        track_jobs="true",
        tracking_queue=settings.tracking_queue,
        **overrides,
    )


# -- Redis


async def test_a_redis_url_nobody_answers_is_a_failure_naming_it(settings: Settings, unused_tcp_port: int) -> None:
    async with _declared(settings):
        url = f"redis://127.0.0.1:{unused_tcp_port}/0"
        ran = await _snapworker("check", env=_env(settings, redis_url=url))
    assert ran.code == 1
    [row] = _rows(ran, "FAIL", "redis")
    assert f"Redis at {url} does not answer PING" in row


async def test_a_redis_url_that_answers_is_ok(settings: Settings) -> None:
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings, redis_url="redis://127.0.0.1:6379/0"))
    assert ran.code == 0, ran.out
    [row] = _rows(ran, "ok", "redis")
    assert "redis://127.0.0.1:6379/0 answers PING" in row


async def test_a_redis_url_without_the_redis_package_is_a_failure_saying_what_to_install(
    settings: Settings, tmp_path: Path
) -> None:
    # a `redis` package that cannot be imported, first on the path: as if the [redis] extra were not installed
    (tmp_path / "redis").mkdir()
    (tmp_path / "redis" / "__init__.py").write_text("raise ImportError('not installed (test)')\n")
    env = _env(settings, redis_url="redis://127.0.0.1:6379/0")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *sys.path])
    async with _declared(settings):
        ran = await _snapworker("check", env=env)
    assert ran.code == 1
    [row] = _rows(ran, "FAIL", "redis")
    assert "the redis package is not installed: pip install 'snapworker[redis]'" in row


async def test_without_a_redis_url_there_is_no_redis_row(settings: Settings) -> None:
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings))
    assert ran.code == 0, ran.out
    assert [line for line in ran.out.splitlines() if line.split()[1:2] == ["redis"]] == []


# -- the accounts file


async def test_a_malformed_project_id_in_the_accounts_file_is_a_failure_naming_it(
    settings: Settings, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[[account]]\nname = "europe"\nprojects = ["{GOOD_PROJECT}", "0123456789ABCDEF0123456789ABCDEF"]\n'
        'auth_token = "t"\n'
    )
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings, accounts_file=str(accounts)))
    assert ran.code == 1
    [row] = _rows(ran, "FAIL", "accounts")
    assert "account 'europe'" in row
    assert "'0123456789ABCDEF0123456789ABCDEF' is not a project ID" in row
    assert "32 lowercase hex characters" in row


async def test_well_formed_project_ids_in_the_accounts_file_are_ok(settings: Settings, tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(f'[[account]]\nname = "europe"\nprojects = ["{GOOD_PROJECT}"]\nauth_token = "t"\n')
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings, accounts_file=str(accounts)))
    assert ran.code == 0, ran.out
    [row] = _rows(ran, "ok", "accounts")
    assert "1 accounts, 1 project IDs well formed" in row


# -- dead letters


async def test_dead_letters_waiting_are_a_warning_with_their_count_and_the_replay_command(settings: Settings) -> None:
    async with _declared(settings) as channel:
        await _publish(channel, settings.dead_letter_queue, 3)
        ran = await _snapworker("check", env=_env(settings))
    assert ran.code == 0, ran.out  # a warning, not a failure
    [row] = [line for line in _rows(ran, "WARN", "queue") if "dead letters" in line]
    assert f"3 dead letters wait in {settings.dead_letter_queue!r}" in row
    assert "`snapworker replay`" in row


async def test_an_empty_dead_letter_queue_is_no_warning(settings: Settings) -> None:
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings))
    assert [line for line in ran.out.splitlines() if "dead letters" in line] == []


# -- a fleet that wastes calls


async def test_several_consumers_without_partitions_or_redis_are_a_fleet_warning(settings: Settings) -> None:
    async with _declared(settings) as channel:
        queue = await channel.get_queue(settings.request_queue)
        tags = [await queue.consume(_give_back) for _ in range(2)]
        try:
            ran = await _snapworker("check", env=_env(settings, partitions="0"))
        finally:
            for tag in tags:
                await queue.cancel(tag)
    assert ran.code == 0, ran.out
    [row] = _rows(ran, "WARN", "fleet")
    assert f"2 workers consume {settings.request_queue!r} with PARTITIONS=0" in row
    assert "SNAPWORKER_REDIS_URL" in row


async def test_one_consumer_is_no_fleet_warning(settings: Settings) -> None:
    async with _declared(settings) as channel:
        queue = await channel.get_queue(settings.request_queue)
        tag = await queue.consume(_give_back)
        try:
            ran = await _snapworker("check", env=_env(settings, partitions="0"))
        finally:
            await queue.cancel(tag)
    assert _rows(ran, "WARN", "fleet") == []


# -- tracking and completions


async def test_an_unset_completion_queue_says_completions_go_only_to_reply_to(settings: Settings) -> None:
    tracked = settings.model_copy(update={"track_jobs": True, "completion_queue": ""})
    async with _declared(tracked):
        ran = await _snapworker("check", env=_tracking_env(tracked, completion_queue=""))
    assert ran.code == 0, ran.out
    assert any("completion queue: not set: completions only to reply_to" in row for row in _rows(ran, "ok", "tracking"))


async def test_tracking_queues_not_declared_yet_are_ok_the_first_worker_declares_them(settings: Settings) -> None:
    async with _declared(settings):  # tracking off here: its queues are not declared
        tracked = settings.model_copy(update={"track_jobs": True})
        ran = await _snapworker("check", env=_tracking_env(tracked, completion_queue=settings.completion_queue))
    assert ran.code == 0, ran.out
    rows = _rows(ran, "ok", "tracking")
    assert any(f"tracking queue {settings.tracking_queue!r} does not exist yet" in row for row in rows)
    assert any(f"completion queue {settings.completion_queue!r} does not exist yet" in row for row in rows)


async def test_jobs_waiting_with_no_worker_tracking_them_are_a_warning(settings: Settings) -> None:
    tracked = settings.model_copy(update={"track_jobs": True})
    async with _declared(tracked) as channel:
        await _publish(channel, tracked.tracking_queue, 2)
        ran = await _snapworker("check", env=_tracking_env(tracked, completion_queue=tracked.completion_queue))
    assert ran.code == 0, ran.out
    [row] = _rows(ran, "WARN", "tracking")
    assert f"2 jobs wait in {tracked.tracking_queue!r} and no worker follows them" in row


async def test_completions_nobody_reads_are_a_warning(settings: Settings) -> None:
    tracked = settings.model_copy(update={"track_jobs": True})
    async with _declared(tracked) as channel:
        await _publish(channel, tracked.completion_queue, 4)
        ran = await _snapworker("check", env=_tracking_env(tracked, completion_queue=tracked.completion_queue))
    assert ran.code == 0, ran.out
    [row] = _rows(ran, "WARN", "tracking")
    assert f"completion queue {tracked.completion_queue!r} holds 4 completions and no consumer reads it" in row


# -- the credential


async def test_a_refused_token_file_is_a_failure_naming_the_file(settings: Settings, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired\n")
    env = _env(settings, auth_token_file=str(token_file))
    del env["SNAPWORKER_AUTH_TOKEN"]
    async with _declared(settings):
        ran = await _snapworker("check", env=env)
    assert ran.code == 1
    [row] = _rows(ran, "FAIL", "api")
    assert "credentials refused (401 APIG.0301" in row
    assert f"SNAPWORKER_AUTH_TOKEN_FILE {str(token_file)!r}" in row


async def test_an_accepted_token_file_is_ok(settings: Settings, tmp_path: Path) -> None:
    assert settings.auth_token is not None
    token_file = tmp_path / "token"
    token_file.write_text(settings.auth_token.get_secret_value())
    env = _env(settings, auth_token_file=str(token_file), project_id=GOOD_PROJECT)
    del env["SNAPWORKER_AUTH_TOKEN"]
    async with _declared(settings):
        ran = await _snapworker("check", env=env)
    assert _rows(ran, "FAIL", "api") == []
    [row] = _rows(ran, "ok", "api")
    assert "authenticated" in row


async def test_each_account_s_credential_is_verified_in_one_of_its_projects(settings: Settings, tmp_path: Path) -> None:
    assert settings.auth_token is not None
    accounts = tmp_path / "accounts.toml"
    token, url = settings.auth_token.get_secret_value(), settings.api_url
    accounts.write_text(
        f'[[account]]\nname = "good"\nprojects = ["{GOOD_PROJECT}"]\nauth_token = "{token}"\nendpoint = "{url}"\n'
        f'[[account]]\nname = "stale"\nprojects = ["{"f" * 32}"]\nauth_token = "expired"\nendpoint = "{url}"\n'
    )
    async with _declared(settings):
        ran = await _snapworker("check", env=_env(settings, accounts_file=str(accounts)))
    assert ran.code == 1
    [ok] = _rows(ran, "ok", "account")
    assert "'good': credential ok" in ok
    [refused] = _rows(ran, "FAIL", "account")
    assert "'stale': credential refused" in refused
    assert "APIG.0301" in refused
