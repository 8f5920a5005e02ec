"""``snapworker top`` in a pseudo-terminal, as a user sees it, against the real broker with this test's queues."""

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
from collections.abc import Awaitable, Callable, Iterator

import pytest

from snapworker.runtime.worker import Worker
from snapworker.settings import Settings
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


def _row(screen: str, queue: str) -> list[str]:
    """The cells of ``queue``'s row in the last frame drawn."""
    [*_, line] = [line for line in screen.splitlines() if f" {queue} " in line]
    return [cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]]


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
    assert _row(screen, settings.request_queue) == [settings.request_queue, "3", "0", ""]
    assert _row(screen, settings.dead_letter_queue) == [settings.dead_letter_queue, "0", "1", ""]  # the probe reads
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
    cells = _row(screen, f"{url}/metrics")
    assert cells[-1] == "yes"  # consuming
    assert cells[-2] == f"{settings.rate_limit:.2f}"  # the limiter's rate now


async def test_top_says_when_a_worker_does_not_answer(
    probe: BrokerProbe, settings: Settings, terminal: Callable[..., Terminal], unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    term = terminal("--once", "--metrics", url, env=_env(settings))
    screen = await asyncio.to_thread(term.read_until, lambda s: False, 30)
    assert term.proc.wait(timeout=10) == 0, screen
    assert _row(screen, url)[1].startswith("unreachable")


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
