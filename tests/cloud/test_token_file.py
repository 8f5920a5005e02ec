"""TokenFile: a token rotated in its file is used within a second, without a restart; a broken file keeps the last
good token. The clock is moved by hand, never slept."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from snapworker.cloud.token_file import TokenFile


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _rotate(path: Path, token: str) -> None:
    """Write a new token the way Kubernetes and careful scripts do: a new file renamed over the old one."""
    new = path.with_suffix(".new")
    new.write_text(token + "\n", encoding="utf-8")
    os.replace(new, path)


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("first\n", encoding="utf-8")
    return path


def test_the_token_is_read_at_once_without_its_line_end(token_path: Path) -> None:
    assert TokenFile(token_path, clock=Clock()).token() == "first"


def test_a_rotated_token_is_used_once_the_check_interval_passed(token_path: Path) -> None:
    clock = Clock()
    tokens = TokenFile(token_path, check_interval_s=1.0, clock=clock)
    _rotate(token_path, "second")
    assert tokens.token() == "first"  # looked at less than a second ago
    clock.now += 1.0
    assert tokens.token() == "second"


def test_reload_reads_a_rotated_token_at_once_and_says_it_changed(token_path: Path) -> None:
    tokens = TokenFile(token_path, clock=Clock())
    _rotate(token_path, "second")
    assert tokens.reload() is True
    assert tokens.token() == "second"
    assert tokens.reload() is False  # the same token again


def test_an_emptied_file_keeps_the_last_good_token_with_one_warning(
    token_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    tokens = TokenFile(token_path, clock=clock)
    token_path.write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="snapworker.cloud"):
        assert tokens.reload() is False
        assert tokens.reload() is False
    assert tokens.token() == "first"
    assert [r.getMessage() for r in caplog.records if "is empty" in r.getMessage()] != []
    assert len(caplog.records) == 1


def test_a_removed_file_keeps_the_last_good_token(token_path: Path) -> None:
    clock = Clock()
    tokens = TokenFile(token_path, clock=clock)
    token_path.unlink()
    clock.now += 5
    assert tokens.token() == "first"
    _rotate(token_path, "back")
    clock.now += 5
    assert tokens.token() == "back"
