"""The completion settings: no completion queue unless one is set, and a bound on it when it is."""

from __future__ import annotations

import pytest

from snapworker.errors import ConfigError
from snapworker.settings import Settings, load_settings


def test_no_completion_queue_is_set_by_default() -> None:
    assert Settings().completion_queue == ""


def test_a_completion_queue_holds_at_most_100000_completions_by_default() -> None:
    assert Settings().completion_queue_max_length == 100_000


def test_the_completion_queue_and_its_bound_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPWORKER_COMPLETION_QUEUE", "my.completions")
    monkeypatch.setenv("SNAPWORKER_COMPLETION_QUEUE_MAX_LENGTH", "0")
    settings = load_settings()
    assert (settings.completion_queue, settings.completion_queue_max_length) == ("my.completions", 0)


def test_a_negative_bound_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="SNAPWORKER_COMPLETION_QUEUE_MAX_LENGTH"):
        load_settings(completion_queue_max_length=-1)


def test_a_completion_queue_named_like_another_queue_is_still_refused() -> None:
    with pytest.raises(ConfigError, match="COMPLETION_QUEUE must differ"):
        load_settings(completion_queue="snapworker.results")
