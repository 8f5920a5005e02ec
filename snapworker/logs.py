"""Logging set-up: a readable console format or one JSON object a line, with secrets redacted.

Context (request_id, project_id, job_id) travels in ``extra={...}`` and is printed when present. The redacting
filter is a last line of defence: code already never logs secrets, but a library's debug line might.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime

from snapworker.settings import Settings

__all__ = ["RedactingFilter", "configure_logging"]

CONTEXT_FIELDS = ("request_id", "project_id", "job_id", "batch_id")
_REDACTED = "***"
# header-shaped secrets, whatever the value
_HEADER_SECRETS = re.compile(r"(?i)(x-auth-token|x-subject-token)(['\"]?\s*[:=]\s*['\"]?)([^'\",}\s]+)")
# an Authorization value has spaces in it (scheme, Access=, Signature=): redact to the end of the value
_AUTHORIZATION = re.compile(r"(?i)(authorization)(['\"]?\s*[:=]\s*['\"]?)([^'\"\n}]+)")
_URL_PASSWORD = re.compile(r"(amqps?://[^:/@\s]+:)([^@\s]+)(@)")


class RedactingFilter(logging.Filter):
    """Replaces known secret values and secret-looking headers in every record with ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        text = _HEADER_SECRETS.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)
        text = _AUTHORIZATION.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)
        return _URL_PASSWORD.sub(lambda m: m.group(1) + _REDACTED + m.group(3), text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{k}={getattr(record, k)}" for k in CONTEXT_FIELDS if getattr(record, k, None))
        return f"{line} [{context}]" if context else line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


def _secrets_of(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    values = [s.get_secret_value() for s in (settings.auth_token, settings.secret_key) if s is not None]
    password = urlsplit(settings.amqp_url.get_secret_value()).password
    if password:
        values.append(password)
    return values


def configure_logging(settings: Settings, stream: object = None) -> logging.Handler:
    """Install one handler on the root logger per LOG_LEVEL and LOG_FORMAT; return it."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(_secrets_of(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_snapworker", False):
            root.removeHandler(old)
    handler._snapworker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # aiormq logs every frame at DEBUG; keep our DEBUG readable
    logging.getLogger("aiormq").setLevel(max(logging.INFO, root.level))
    return handler
