"""Logging set-up: a readable console format or one JSON object a line, with secrets redacted.

Context (request_id, project_id, job_id) travels in ``extra={...}`` and is printed when present. In the JSON
format every ``extra`` field is a field of the line (the worker's totals, the progress figures), not text inside
``message``. The redacting filter is a last line of defence: code already never logs secrets, but a library's
debug line might. Repeated warnings are aggregated (:class:`RepeatFilter`): a burst of the same warning is
written a few times, then counted, and the count rides on the next one after the window.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from snapworker.settings import Settings

__all__ = ["RedactingFilter", "RepeatFilter", "configure_logging"]

CONTEXT_FIELDS = ("request_id", "project_id", "job_id", "batch_id")
# what every LogRecord has: anything else on a record came from ``extra={...}``
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


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
        for key, value in _extras(record).items():  # JSON lines carry extras as fields: redact them too
            if isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class RepeatFilter(logging.Filter):
    """Aggregates repeated WARNING-and-above records (same logger, level and message template).

    Within ``window_s`` of the first of a kind, ``burst`` records pass; the rest are counted, not written. The
    first record of the kind after the window passes with ``(N more like it in the last W s were not logged)``
    appended and ``suppressed=N`` as a field. Lower levels always pass.
    """

    def __init__(self, *, window_s: float = 60.0, burst: int = 5, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._window_s = window_s
        self._burst = burst
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is None or now - seen[0] >= self._window_s:
            suppressed = int(seen[2]) if seen is not None else 0
            if len(self._seen) >= 1000:  # kinds are message templates, so few; never let it grow unbounded
                self._seen.clear()
            self._seen[kind] = [now, 1, 0]
            if suppressed:
                record.msg = (
                    f"{record.getMessage()} ({suppressed} more like it in the last {self._window_s:.0f} s were not "
                    f"logged)"
                )
                record.args = None
                record.suppressed = suppressed
            return True
        if seen[1] < self._burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        totals = getattr(record, "totals", None)
        if totals is not None:  # "worker totals {...}": one JSON object people and the benchmark can read
            first, newline, rest = line.partition("\n")
            line = f"{first} {json.dumps(totals, sort_keys=True)}{newline}{rest}"
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
        for key, value in _extras(record).items():
            if value is not None and key not in entry:
                entry[key] = value
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(entry, ensure_ascii=False, default=str)


def _secrets_of(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    secrets = (settings.auth_token, settings.secret_key, settings.security_token, settings.api_proxy)
    values = [s.get_secret_value() for s in secrets if s is not None]
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
    handler.addFilter(RepeatFilter())  # first: it keys on the message template, which redaction rewrites
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
