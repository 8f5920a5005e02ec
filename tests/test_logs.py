"""Log formatting and the redacting filter: the last line of defence for secrets."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from snapworker.ops.logs import RedactingFilter, configure_logging
from snapworker.settings import Settings


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
