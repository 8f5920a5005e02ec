"""Log formatting and the redacting filter: the last line of defence for secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from snapworker.ops.logs import RedactingFilter, configure_logging
from snapworker.settings import Settings, redact_url


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    settings = Settings(
        access_key="AK1",
        secret_key="sk-SECRET-2",
        amqp_url="amqp://user:pw-SECRET-3@rabbit:5672/",
        log_format="json",
        log_level="DEBUG",
    )
    stream = io.StringIO()
    handler = configure_logging(settings, stream=stream)
    try:
        yield stream, logging.getLogger("snapworker.test")
    finally:
        logging.getLogger().removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_configured_secret_values_are_redacted(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    log.warning("key %s and url %s", "sk-SECRET-2", "amqp://user:pw-SECRET-3@rabbit/")
    text = stream.getvalue()
    for secret in ("sk-SECRET-2", "pw-SECRET-3"):
        assert secret not in text
    assert "***" in text


def test_a_configured_token_is_redacted() -> None:
    stream = io.StringIO()
    handler = configure_logging(Settings(auth_token="tok-SECRET-1"), stream=stream)
    try:
        logging.getLogger("snapworker.test").warning("token %s", "tok-SECRET-1")
    finally:
        logging.getLogger().removeHandler(handler)
    assert "tok-SECRET-1" not in stream.getvalue()


def test_auth_headers_are_redacted_whatever_their_value() -> None:
    redact = RedactingFilter([]).redact
    assert redact("{'X-Auth-Token': 'abc123'}") == "{'X-Auth-Token': '***'}"
    assert "sig" not in redact("Authorization: SDK-HMAC-SHA256 Access=AK, Signature=sig")


def test_passwords_in_any_amqp_url_are_redacted() -> None:
    assert RedactingFilter([]).redact("amqp://u:hunter2@h:5672/") == "amqp://u:***@h:5672/"


def test_secrets_in_exception_tracebacks_are_redacted(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    try:
        raise RuntimeError("failed with sk-SECRET-2")
    except RuntimeError:
        log.exception("boom")
    assert "sk-SECRET-2" not in stream.getvalue()


def test_json_lines_carry_context_fields(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    log.info("sent", extra={"request_id": "r1", "project_id": "p1", "job_id": "j1"})
    [entry] = _lines(stream)
    assert (entry["request_id"], entry["project_id"], entry["job_id"], entry["level"]) == ("r1", "p1", "j1", "INFO")


def test_console_lines_show_context_in_brackets() -> None:
    stream = io.StringIO()
    handler = configure_logging(Settings(log_format="console"), stream=stream)
    try:
        logging.getLogger("snapworker.test").warning("hello", extra={"request_id": "r9"})
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("hello [request_id=r9]")


def test_a_url_user_name_that_equals_the_password_is_shown_and_the_password_is_not() -> None:
    stream = io.StringIO()
    handler = configure_logging(Settings(amqp_url="amqp://guest:guest@rabbit:5672/"), stream=stream)
    try:
        log = logging.getLogger("snapworker.test")
        log.warning("raw %s", "amqp://guest:guest@rabbit:5672/")
        log.warning("as redact_url shows it %s", redact_url("amqp://guest:guest@rabbit:5672/"))
    finally:
        logging.getLogger().removeHandler(handler)
    raw, shown = stream.getvalue().splitlines()
    assert raw.endswith("raw amqp://guest:***@rabbit:5672/")
    assert shown.endswith("as redact_url shows it amqp://guest:***@rabbit:5672/")


def test_the_broker_password_is_still_redacted_outside_urls() -> None:
    redact = RedactingFilter([], passwords=["pw-SECRET-3"]).redact
    assert redact("login with pw-SECRET-3 refused") == "login with *** refused"


def test_a_secret_in_a_url_user_name_is_redacted() -> None:
    assert RedactingFilter(["tok-SECRET-1"]).redact("http://tok-SECRET-1:x@proxy:3128/") == "http://***:***@proxy:3128/"


def test_passwords_in_urls_of_any_scheme_are_redacted() -> None:
    redact = RedactingFilter([]).redact
    assert redact("redis://:hunter2@cache:6379/0 and http://me:hunter3@proxy:3128") == (
        "redis://:***@cache:6379/0 and http://me:***@proxy:3128"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://guest:guest@localhost:5672/", "amqp://guest:***@localhost:5672/"),
        ("amqps://svc:p%40ss@[::1]:5671/vh", "amqps://svc:***@[::1]:5671/vh"),
        ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("amqp://localhost/", "amqp://localhost/"),
    ],
)
def test_redact_url_masks_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
