"""Strict settings: empty secrets and two kinds of credentials refused, unknown SNAPWORKER_* variables warned about."""

from __future__ import annotations

import logging

import pytest

from snapworker.errors import ConfigError
from snapworker.settings import load_settings, unknown_variables


@pytest.mark.parametrize("name", ["auth_token", "secret_key"])
def test_an_empty_secret_is_refused_by_name(name: str) -> None:
    others = {"access_key": "AK", "secret_key": "SK"} if name == "secret_key" else {}
    with pytest.raises(ConfigError, match=f"SNAPWORKER_{name.upper()}|{name.upper()} is set but empty"):
        load_settings(**(others | {name: "  "}))


def test_an_empty_token_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPWORKER_AUTH_TOKEN", "")
    with pytest.raises(ConfigError, match="AUTH_TOKEN is set but empty"):
        load_settings()


def test_a_token_and_access_keys_together_are_refused_saying_what_to_remove() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(auth_token="tok", access_key="AK", secret_key="SK")
    assert "remove AUTH_TOKEN" in str(info.value)
    assert "remove ACCESS_KEY and SECRET_KEY" in str(info.value)


def test_a_misspelled_variable_gets_a_did_you_mean() -> None:
    assert unknown_variables({"SNAPWORKER_LINGERMS": "10"}) == [
        "ignoring unknown variable SNAPWORKER_LINGERMS; did you mean SNAPWORKER_LINGER_MS?"
    ]


def test_an_unknown_variable_far_from_any_setting_points_to_the_readme() -> None:
    assert unknown_variables({"SNAPWORKER_ZZZ": "1"}) == [
        "ignoring unknown variable SNAPWORKER_ZZZ; see README.md, Settings"
    ]


def test_known_settings_test_variables_and_other_prefixes_are_not_warned_about() -> None:
    environ = {"SNAPWORKER_LINGER_MS": "1", "SNAPWORKER_TEST_AMQP_URL": "x", "PATH": "/bin", "snapworker_prefetch": "5"}
    assert unknown_variables(environ) == []


def test_load_settings_logs_each_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SNAPWORKER_MAX_BACH", "50")
    with caplog.at_level(logging.WARNING, logger="snapworker.settings"):
        load_settings()
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown variable SNAPWORKER_MAX_BACH; did you mean SNAPWORKER_MAX_BATCH?"
    ]
