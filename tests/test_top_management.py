"""What ``snapworker top`` reads from RabbitMQ's management API (a stand-in server on loopback: the test broker
has no management plugin)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from snapworker.tools.management import ManagementApi, QueueCounts

QUEUES = [
    {"name": "rq", "messages_ready": 0, "messages_unacknowledged": 300, "consumers": 2},
    {"name": "fresh"},  # a queue the plugin has no statistics for yet
]


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def queues(request: web.Request) -> web.Response:
        seen.append(request)
        if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"ops:s3cret").decode():
            return web.Response(status=401)
        return web.json_response(QUEUES)

    app = web.Application()
    app.router.add_get("/api/queues/{vhost}", queues)
    async with TestServer(app, host="127.0.0.1") as test_server:
        yield str(test_server.make_url("")), seen


async def _ask(api: ManagementApi) -> dict[str, QueueCounts] | str:
    async with aiohttp.ClientSession() as session:
        return await api.queues(session)


async def test_unacked_counts_are_read_per_queue(server: tuple[str, list[web.Request]]) -> None:
    url, _ = server
    counts = await _ask(ManagementApi(url, "/", "amqp://ops:s3cret@127.0.0.1:5672/"))
    assert counts == {"rq": QueueCounts(0, 300, 2), "fresh": QueueCounts(0, 0, 0)}


async def test_the_vhost_is_quoted_into_the_path(server: tuple[str, list[web.Request]]) -> None:
    url, seen = server
    await _ask(ManagementApi(url, "/", "amqp://ops:s3cret@127.0.0.1:5672/"))
    assert seen[0].raw_path.startswith("/api/queues/%2F?")


async def test_the_urls_own_credentials_win_over_the_brokers(server: tuple[str, list[web.Request]]) -> None:
    url, _ = server
    with_user = url.replace("http://", "http://ops:s3cret@")
    counts = await _ask(ManagementApi(with_user, "/", "amqp://guest:guest@127.0.0.1:5672/"))
    assert isinstance(counts, dict)


async def test_a_refused_login_is_a_short_problem_not_an_exception(server: tuple[str, list[web.Request]]) -> None:
    url, _ = server
    assert await _ask(ManagementApi(url, "/", "amqp://guest:guest@127.0.0.1:5672/")) == "management API: HTTP 401"


async def test_an_api_that_does_not_answer_is_a_short_problem(unused_tcp_port: int) -> None:
    api = ManagementApi(f"http://127.0.0.1:{unused_tcp_port}", "/", "amqp://guest:guest@127.0.0.1:5672/")
    assert await _ask(api) == "management API unreachable (ClientConnectorError)"


def test_the_shown_url_carries_no_password() -> None:
    api = ManagementApi("http://ops:s3cret@rabbit:15672/", "prod", "amqp://x:y@rabbit/prod")
    assert api.url == "http://rabbit:15672/api/queues/prod"
