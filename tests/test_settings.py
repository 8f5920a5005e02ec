"""Settings: read from SNAPWORKER_* variables, refused with a clear message when they cannot work."""

from __future__ import annotations

import pytest

from snapworker.errors import ConfigError
from snapworker.settings import Settings, load_settings, redact_url


def test_defaults_match_the_documented_ones() -> None:
    s = Settings()
    assert (s.max_batch, s.linger_ms, s.prefetch, s.rate_limit, s.max_concurrency) == (100, 250, 1000, 1.5, 8)
    assert s.request_queue == "snapworker.requests"
    assert s.dead_letter_queue == "snapworker.dead-letter"


def test_api_url_defaults_from_the_region() -> None:
    assert Settings(region="ap-southeast-1").api_url == "https://workspace.ap-southeast-1.myhuaweicloud.com"


def test_environment_variables_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPWORKER_MAX_BATCH", "40")
    monkeypatch.setenv("SNAPWORKER_AUTH_TOKEN", "tok")
    s = load_settings()
    assert s.max_batch == 40
    assert s.auth_mode == "token"


def test_secrets_are_never_printed() -> None:
    token = Settings(auth_token="tok-123", amqp_url="amqp://u:pw-789@host:5672/")
    aksk = Settings(access_key="AK", secret_key="sk-456")
    shown = "".join(repr(s) + str(s) + s.model_dump_json() for s in (token, aksk))
    for secret in ("tok-123", "sk-456", "pw-789"):
        assert secret not in shown


def test_settings_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Settings().max_batch = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_batch": 101}, "SNAPWORKER_MAX_BATCH"),
        ({"prefetch": 50}, "PREFETCH (50) is below MAX_BATCH (100)"),
        ({"retry_max_time_s": 1790.0}, "acknowledgement timeout"),
        ({"access_key": "AK"}, "ACCESS_KEY and SECRET_KEY go together"),
        ({"api_url": "ftp://x"}, "http(s) URL"),
        ({"amqp_url": "http://x"}, "amqp://"),
        ({"result_queue": "snapworker.requests"}, "must differ"),
    ],
)
def test_settings_that_cannot_work_are_refused_with_a_clear_message(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**overrides)
    assert message in str(info.value)


def test_redact_url_hides_the_password() -> None:
    assert redact_url("amqp://guest:secret@rabbit:5672/vh") == "amqp://guest:***@rabbit:5672/vh"
    assert redact_url("amqp://rabbit/") == "amqp://rabbit/"
