"""``snapworker top`` as a user sees it, in a pseudo-terminal or piped, against the real broker with this test's
queues; a broker outage is played by a TCP proxy in the test (the real broker, shared with other tests, stays up)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
from snapworker.simulator.app import Simulator
from snapworker.tools.top import parse_metrics
from tests.conftest import AMQP_URL
from tests.integration.harness import BrokerProbe
from tests.integration.test_tools import _env

pytestmark = pytest.mark.broker

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """``python -m snapworker top ...`` on the slave side of a 50x200 pseudo-terminal; reads its master side."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self._master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        env = env | {"TERM": "xterm-256color"}
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snapworker", "top", *args], stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        self.screen = ""

    def read_until(self, done: Callable[[str], bool], timeout: float) -> str:
        """Everything written so far (ANSI codes removed), once ``done`` says so, the process ended, or timeout."""
        deadline = time.monotonic() + timeout
        while not done(self.screen) and time.monotonic() < deadline:
            ready, _, _ = select.select([self._master], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            self.screen += _ANSI.sub("", chunk.decode(errors="replace"))
        return self.screen

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(*args: str, env: dict[str, str]) -> Terminal:
        opened.append(Terminal(list(args), env))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def _row(screen: str, name: str) -> list[str]:
    """The cells of the row of queue or worker ``name`` in the last frame drawn."""
    rows = [[cell.strip() for cell in line.split("│")] for line in screen.splitlines() if "│" in line]
    [*_, cells] = [cells for cells in rows if cells[0] == name]
    return cells


async def _requests(probe: BrokerProbe, n: int) -> None:
    for i in range(n):
        await probe.publish({"project_id": "p1", "desktop_ids": [f"d{i}"]})


async def test_top_once_shows_every_queue_with_its_depth_and_consumers(
    probe: BrokerProbe, settings: Settings, terminal: Callable[..., Terminal]
) -> None:
    await _requests(probe, 3)
    term = terminal("--once", env=_env(settings))
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 30)
    assert term.proc.wait(timeout=10) == 0, screen
    assert _row(screen, settings.request_queue) == [settings.request_queue, "3", "?", "0", "-"]
    assert _row(screen, settings.dead_letter_queue) == [settings.dead_letter_queue, "0", "?", "1", "-"]  # the probe
    assert _row(screen, settings.result_queue)[1] == "0"


async def test_top_shows_a_queue_that_does_not_exist_as_missing(
    settings: Settings, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("--once", env=_env(settings))  # no probe: none of the test's queues exist
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 30)
    assert term.proc.wait(timeout=10) == 0, screen
    assert _row(screen, settings.request_queue)[1] == "missing"


async def test_top_shows_a_workers_metrics(
    start_worker: Callable[..., Awaitable[Worker]],
    settings: Settings,
    terminal: Callable[..., Terminal],
    unused_tcp_port: int,
) -> None:
    await start_worker(metrics_port=unused_tcp_port, metrics_host="127.0.0.1")
    url = f"http://127.0.0.1:{unused_tcp_port}"
    term = terminal("--once", "--metrics", url, env=_env(settings))
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 30)
    assert term.proc.wait(timeout=10) == 0, screen
    cells = _row(screen, f"127.0.0.1:{unused_tcp_port}")
    assert cells[-1] == "ok"  # consuming, not throttled
    assert cells[-2] == f"{settings.rate_limit:.2f}"  # the limiter's rate now
    assert cells[1:3] == ["0", "0"]  # holds no request, no batch in flight


async def test_top_says_when_a_worker_does_not_answer(
    probe: BrokerProbe, settings: Settings, terminal: Callable[..., Terminal], unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    term = terminal("--once", "--metrics", url, env=_env(settings))
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 30)
    assert term.proc.wait(timeout=10) == 0, screen
    assert _row(screen, f"127.0.0.1:{unused_tcp_port}")[-1] == "down"


async def test_top_redraws_until_ctrl_c_and_exits_without_a_traceback(
    probe: BrokerProbe, settings: Settings, terminal: Callable[..., Terminal]
) -> None:
    term = terminal("--interval", "0.2", env=_env(settings))
    await asyncio.to_thread(term.read_until, lambda s: settings.request_queue in s, 30)
    await _requests(probe, 2)
    screen = await asyncio.to_thread(term.read_until, lambda s: _row(s, settings.request_queue)[1] == "2", 30)
    assert _row(screen, settings.request_queue)[:2] == [settings.request_queue, "2"]
    term.proc.send_signal(signal.SIGINT)
    assert await asyncio.to_thread(term.proc.wait, 10) == 0
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 1)
    assert "Traceback" not in screen
    assert "KeyboardInterrupt" not in screen


class Piped:
    """``python -m snapworker top ...`` writing to pipes (not a terminal): frames come one after another."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = ""
        self.err = ""
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, "out")),
            asyncio.create_task(self._read(proc.stderr, "err")),
        ]

    async def _read(self, stream: asyncio.StreamReader, name: str) -> None:
        while chunk := await stream.read(65536):
            setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))

    async def until(self, done: Callable[[str], bool], timeout: float) -> str:
        """The output so far, once ``done`` says so; fails the test at timeout or if the process ended first."""
        deadline = time.monotonic() + timeout
        while not done(self.out):
            assert self.proc.returncode is None, f"top ended ({self.proc.returncode}): {self.err}"
            assert time.monotonic() < deadline, f"timed out; output so far:\n{self.out}\n{self.err}"
            await asyncio.sleep(0.05)
        return self.out

    async def finish(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.gather(*self._readers)
        return code


@pytest.fixture
async def piped() -> AsyncIterator[Callable[..., Awaitable[Piped]]]:
    started: list[Piped] = []

    async def start(*args: str, env: dict[str, str]) -> Piped:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "snapworker", "top", *args, env=env, stdout=PIPE, stderr=PIPE
        )
        started.append(Piped(proc))
        return started[-1]

    yield start
    for top in started:
        if top.proc.returncode is None:
            top.proc.kill()
        await top.finish()


def _frames(out: str) -> list[str]:
    """The frames printed so far, each from its title line on."""
    return re.split(r"^(?=snapworker top  \d\d:\d\d:\d\d)", out, flags=re.MULTILINE)[1:]


class Proxy:
    """A TCP proxy on loopback in front of RabbitMQ. ``stop`` cuts every connection through it and stops
    listening: to a client of the proxy, the broker is gone; to everyone else, nothing happened."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)  # the same port again
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    def url(self, amqp_url: str) -> str:
        parts = urlsplit(amqp_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{self.port}"))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:  # cut by stop(): the other direction ends too
        pass
    finally:
        writer.transport.abort()


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[Proxy]:
    parts = urlsplit(amqp_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


def _has_row(name: str) -> Callable[[str], bool]:
    return lambda out: any(line.startswith(f"{name} ") for line in out.splitlines())


async def test_top_survives_the_broker_going_away_and_coming_back(
    probe: BrokerProbe, settings: Settings, proxy: Proxy, piped: Callable[..., Awaitable[Piped]]
) -> None:
    top = await piped("--interval", "0.3", env=_env(settings) | {"SNAPWORKER_AMQP_URL": proxy.url(AMQP_URL)})
    await top.until(_has_row(settings.request_queue), 30)

    await proxy.stop()
    await top.until(lambda out: "broker unreachable" in out, 30)
    await asyncio.sleep(3)  # a few seconds without a broker
    await proxy.start()
    back = len(top.out)
    await top.until(lambda out: _has_row(settings.request_queue)(out[back:]), 30)

    assert top.proc.returncode is None  # still running
    away = [f for f in _frames(top.out) if "broker unreachable" in f]
    assert max(int(n) for n in re.findall(r"broker unreachable for (\d+) s", "".join(away))) >= 2
    top.proc.send_signal(signal.SIGINT)
    assert await top.finish() == 0
    assert "Traceback" not in top.out + top.err
    assert top.err == ""


async def test_top_shows_the_requests_a_throttled_worker_holds(
    start_worker: Callable[..., Awaitable[Worker]],
    probe: BrokerProbe,
    settings: Settings,
    simulator: Simulator,
    piped: Callable[..., Awaitable[Piped]],
    unused_tcp_port: int,
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    await start_worker(
        metrics_port=unused_tcp_port, metrics_host="127.0.0.1", retry_max_time_s=60.0, retry_max_tries=50
    )
    async with aiohttp.ClientSession() as session:
        await session.post(f"{simulator.url}/_sim/throttle", params={"seconds": "60"})
        await _requests(probe, 20)
        deadline = time.monotonic() + 30
        while True:  # until the worker holds all 20 and has met the throttle
            async with session.get(url) as response:
                metrics = parse_metrics(await response.text())
            if metrics.held == 20 and metrics.throttles >= 1:
                break
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.1)
        try:
            top = await piped("--once", "--metrics", url, env=_env(settings))
            assert await top.finish() == 0, top.err
        finally:
            await session.post(f"{simulator.url}/_sim/throttle", params={"seconds": "0"})
    worker = _row(top.out, f"127.0.0.1:{unused_tcp_port}")
    assert (worker[1], worker[-1]) == ("20", "throttled")  # HELD, STATE
    assert _row(top.out, settings.request_queue)[1:3] == ["0", "?"]  # none ready; unacked unknown, not 0


async def test_top_prints_frame_after_frame_when_its_output_is_not_a_terminal(
    probe: BrokerProbe, settings: Settings, piped: Callable[..., Awaitable[Piped]]
) -> None:
    top = await piped("--frames", "3", "--interval", "0.1", env=_env(settings))
    assert await top.finish() == 0, top.err
    frames = _frames(top.out)
    assert len(frames) == 3
    assert all(_has_row(settings.request_queue)(frame) for frame in frames)
    assert max(len(line) for line in top.out.splitlines()) <= 80  # a pipe is drawn 80 columns wide


async def test_a_refused_login_ends_top_at_once_with_one_line(
    settings: Settings, piped: Callable[..., Awaitable[Piped]]
) -> None:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-password@{parts.hostname}:{parts.port}"))
    top = await piped("--interval", "0.2", env=_env(settings) | {"SNAPWORKER_AMQP_URL": wrong})  # not --once
    assert await top.finish() == 1
    assert top.err.splitlines() == [line for line in top.err.splitlines() if "refused the login" in line]
    assert len(top.err.splitlines()) == 1
    assert top.out == ""


async def test_a_broker_that_cannot_be_reached_for_the_last_frame_fails_once(
    settings: Settings, piped: Callable[..., Awaitable[Piped]], unused_tcp_port: int
) -> None:
    env = _env(settings) | {"SNAPWORKER_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{unused_tcp_port}/"}
    top = await piped("--once", env=env)
    assert await top.finish() == 1
    assert "broker unreachable" in top.out
    assert [line.split(":")[0] for line in top.err.splitlines()] == ["snapworker top"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--once", "--management", "rabbitmq:15672"), "--management wants an http:// or https:// URL"),
        (("--once", "--frames", "2"), "--once is --frames 1"),
    ],
)
async def test_a_bad_argument_ends_top_with_one_line_and_exit_2(
    args: tuple[str, ...], says: str, settings: Settings, piped: Callable[..., Awaitable[Piped]]
) -> None:
    top = await piped(*args, env=_env(settings))
    assert await top.finish() == 2
    assert len(top.err.splitlines()) == 1
    assert says in top.err
