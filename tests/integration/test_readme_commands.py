"""The README's "By hand" commands work as written: each exits 0 and prints what the README shows under it.

Every ```console block of README.md is part of one shell session, in order: a ``$ `` line is a command, the lines
after it (up to the next command) the output the README promises, where ``…`` stands for what varies (IDs, times)
and whitespace runs count as one space. The test writes the commands, unchanged, into one bash script (so that
``export``, ``&`` and ``kill %1`` mean what they mean in a terminal), adding only redirections that capture each
command's output and exit code, and a wait for a background command's promised output before going on.

The session uses the default queue names (``snapworker.*``) on the local RabbitMQ, as a reader's would, and its
last commands delete them (with ``rabbitmqctl``). So it runs only when no ``snapworker.*`` queue exists before it
(nobody else's session is there to disturb) and the README's simulator port is free; bounded in time, it deletes
the queues again if the script could not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.broker

README = Path(__file__).resolve().parents[2] / "README.md"
SESSION_TIMEOUT_S = 150.0
BACKGROUND_READY_S = 20.0
ELISION = "…"


@dataclass(frozen=True)
class Command:
    line: str
    expected: tuple[str, ...]

    @property
    def background(self) -> bool:
        return re.sub(r"\s+#.*$", "", self.line).rstrip().endswith("&") and not self.line.rstrip().endswith("&&")

    @property
    def body(self) -> str:
        """The command without its trailing ``&``."""
        return re.sub(r"&\s*$", "", re.sub(r"\s+#.*$", "", self.line).rstrip()).rstrip()


def readme_session() -> list[Command]:
    """The commands of README.md's ```console blocks, in order, each with the output shown under it."""
    commands: list[Command] = []
    for block in re.findall(r"^```console\n(.*?)^```$", README.read_text(encoding="utf-8"), re.M | re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            line, *output = chunk.rstrip("\n").split("\n")
            commands.append(Command(line, tuple(output)))
    return commands


def fragments(expected: tuple[str, ...]) -> list[str]:
    """What an output must contain, in order: each line's text between the ``…``, whitespace runs made one."""
    return [part for line in expected for part in (p.strip() for p in _squeeze(line).split(ELISION)) if part]


def _squeeze(text: str) -> str:
    return re.sub(r"[ \t]+", " ", text)


def missing_from(output: str, expected: tuple[str, ...]) -> list[str]:
    """The fragments of ``expected`` that ``output`` does not contain in order (empty: it says what it should)."""
    text, position, missing = _squeeze(output), 0, []
    for part in fragments(expected):
        found = text.find(part, position)
        if found < 0:
            missing.append(part)
        else:
            position = found + len(part)
    return missing


def session_script(commands: list[Command], workdir: Path) -> str:
    """The commands as one bash script, each as written, its output in ``<n>.out`` and exit code in ``<n>.rc``."""
    lines = [f"cd {workdir}", "trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for n, command in enumerate(commands):
        if command.background:
            stderr = "" if re.search(r"\b2>", command.body) else " 2>&1"
            lines.append(f"{command.body} > {n}.out{stderr} &")
            if command.expected:  # a server: go on once it says it is ready, as a reader would
                first = fragments(command.expected)[0].replace("'", "'\\''")
                ticks = int(BACKGROUND_READY_S * 10)
                lines.append(f"for _ in $(seq {ticks}); do grep -qF '{first}' {n}.out && break; sleep 0.1; done")
        else:
            lines.append(f"{{ {command.line}\n}} > {n}.out 2>&1 < /dev/null; echo $? > {n}.rc")
    return "\n".join(lines) + "\n"


def _snapworker_queues() -> list[str]:
    listed = subprocess.run(
        ["rabbitmqctl", "list_queues", "--quiet", "--no-table-headers", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [name for name in listed.stdout.split() if name.startswith("snapworker.")]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # as the simulator binds: a connection of the last run lingering in TIME_WAIT does not hold the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cannot_run(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def session_env(amqp_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A reader's environment: snapworker on PATH, no SNAPWORKER_* settings, a state directory of its own."""
    if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        _cannot_run(f"the README's clean-up uses rabbitmqctl on this machine; the broker is {amqp_url}")
    if shutil.which("rabbitmqctl") is None:
        _cannot_run("rabbitmqctl is not installed: the README's clean-up needs it")
    if left := _snapworker_queues():
        _cannot_run(f"snapworker.* queues exist already (someone's session, or a leftover): {left[:3]}")
    shown = re.search(r"simulate --port (\d+)", README.read_text(encoding="utf-8"))
    assert shown is not None, "the README starts no simulator"
    port = int(shown[1])
    if not _port_is_free(port):
        _cannot_run(f"port {port}, the README's simulator port, is in use")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPWORKER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env |= {"SNAPWORKER_AMQP_URL": amqp_url, "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    try:
        yield env
    finally:
        cleanup = [c for c in readme_session() if "delete_queue" in c.line]
        if _snapworker_queues() and cleanup:  # the script did not get to its clean-up
            subprocess.run(["bash", "-c", cleanup[0].line], env=env, capture_output=True, timeout=120, check=False)


def test_the_readme_session_parses_into_commands_with_their_output() -> None:
    commands = readme_session()
    assert [c.body.split()[:2] for c in commands if c.background] == [["snapworker", "simulate"], ["snapworker", "run"]]
    assert any("delete_queue" in c.line for c in commands)
    assert missing_from("ok  broker   connected\n", ("ok    broker    connected",)) == []
    assert missing_from("reading from x\n", ("reading … from snapworker.results",)) == ["from snapworker.results"]


def test_every_readme_command_runs_as_written_and_prints_what_the_readme_shows(
    session_env: dict[str, str], tmp_path: Path
) -> None:
    commands = readme_session()
    script = tmp_path / "session.sh"
    script.write_text(session_script(commands, tmp_path), encoding="utf-8")
    shell = subprocess.Popen(["bash", str(script)], env=session_env, cwd=tmp_path, start_new_session=True)
    try:
        shell.wait(timeout=SESSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    problems = {}
    for n, command in enumerate(commands):
        out_file, rc_file = tmp_path / f"{n}.out", tmp_path / f"{n}.rc"
        output = out_file.read_text(encoding="utf-8") if out_file.exists() else ""
        if not command.background:
            rc = rc_file.read_text().strip() if rc_file.exists() else "never ran (the session timed out)"
            if rc != "0":
                problems[command.line] = f"exit code {rc}:\n{output}"
                continue
        if missing := missing_from(output, command.expected):
            problems[command.line] = f"does not print {missing}:\n{output}"
    assert problems == {}
    assert _snapworker_queues() == []
