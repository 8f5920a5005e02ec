"""Logging set-up: a readable console format or one JSON object a line, with secrets redacted.

Context (request_id, project_id, job_id) travels in ``extra={...}`` and is printed when present. In the JSON
format every ``extra`` field is a field of the line (the worker's totals, the progress figures), not text inside
``message``. The redacting filter is a last line of defence: code already never logs secrets, but a library's
debug line might. Repeated warnings are aggregated (:class:`RepeatFilter`): a burst of the same warning is
written a few times, then counted, and the count rides on the next one after the window. What the AMQP library
logs when the broker goes away (an ERROR, a WARNING with a traceback, per connection) becomes one WARNING
``broker connection lost: ...`` without traceback, at most once a minute (:class:`BrokerLossFilter`).

Before the settings are loaded (their own warnings, a fatal line about them), :func:`configure_bootstrap_logging`
writes in the format the environment asks for, so with ``LOG_FORMAT=json`` every line of the process is JSON.
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

__all__ = [
    "BrokerLossFilter",
    "RedactingFilter",
    "RepeatFilter",
    "configure_bootstrap_logging",
    "configure_logging",
]

CONTEXT_FIELDS = ("request_id", "project_id", "job_id", "batch_id")
# what every LogRecord has: anything else on a record came from ``extra={...}``
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


def _longest_first(secrets: Iterable[str]) -> list[str]:
    return sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)


_REDACTED = "***"
# header-shaped secrets, whatever the value
_HEADER_SECRETS = re.compile(r"(?i)(x-auth-token|x-subject-token)(['\"]?\s*[:=]\s*['\"]?)([^'\",}\s]+)")
# an Authorization value has spaces in it (scheme, Access=, Signature=): redact to the end of the value
_AUTHORIZATION = re.compile(r"(?i)(authorization)(['\"]?\s*[:=]\s*['\"]?)([^'\"\n}]+)")
# a URL's credentials, any scheme (amqp, redis, an http proxy): the user name is kept, the password is not
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^:/@\s]*)(:)([^@\s/]+)(@)")


class RedactingFilter(logging.Filter):
    """Replaces known secret values, URL passwords and secret-looking headers in every record with ``***``.

    ``passwords`` are secrets too, except where they stand as the user name of a URL: with ``guest:guest`` only
    the password is masked (``amqp://guest:***@host/``), as :func:`snapworker.settings.redact_url` shows it.
    """

    def __init__(self, secrets: Iterable[str], *, passwords: Iterable[str] = ()) -> None:
        super().__init__()
        secrets = list(secrets)  # read twice
        self._secrets = _longest_first(secrets)
        self._everywhere = _longest_first([*secrets, *passwords])

    def redact(self, text: str) -> str:
        parts, done = [], 0
        for url in _URL_CREDENTIALS.finditer(text):
            parts.append(self._redact_plain(text[done : url.start()], self._everywhere))
            scheme, user, colon, _, at = url.groups()
            parts.append(scheme + self._redact_values(user, self._secrets) + colon + _REDACTED + at)
            done = url.end()
        parts.append(self._redact_plain(text[done:], self._everywhere))
        return "".join(parts)

    @staticmethod
    def _redact_values(text: str, secrets: list[str]) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    def _redact_plain(self, text: str, secrets: list[str]) -> str:
        text = self._redact_values(text, secrets)
        text = _HEADER_SECRETS.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)
        return _AUTHORIZATION.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)

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


class BrokerLossFilter(logging.Filter):
    """Folds what aiormq logs when a broker connection goes away into one WARNING of ours, without traceback.

    aiormq 7 logs, per connection: ``Unexpected connection close from remote ...`` (ERROR, the broker's
    Connection.Close), ``Cancelling cause reader exited abnormally`` (WARNING with the traceback of the read that
    failed) and ``Server connection ... was stuck`` (missed heartbeats). Each becomes ``broker connection lost:
    <why>`` on logger ``snapworker.broker``; within ``window_s`` of one that was written, the others are counted,
    not written, and the count rides on the next one written (a broker restart gives one line, not one per
    connection and per symptom). ``error when creating transport`` (ERROR) is dropped: the connect that failed
    raises, and snapworker's own line ("cannot reach RabbitMQ ...; retrying") says it. Other records pass as they are.
    """

    def __init__(self, *, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._written_at: float | None = None
        self._suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiormq.connection") or record.levelno < logging.WARNING:
            return True
        template = str(record.msg)
        if template.startswith("error when creating transport"):
            return False
        why = _why_lost(template, record)
        if why is None:
            return True
        now = self._clock()
        if self._written_at is not None and now - self._written_at < self._window_s:
            self._suppressed += 1
            return False
        self._written_at = now
        record.name, record.levelno, record.levelname = "snapworker.broker", logging.WARNING, "WARNING"
        record.msg, record.args = "broker connection lost: %s", (why,)
        record.exc_info = record.exc_text = record.stack_info = None
        if self._suppressed:
            record.msg += f" ({self._suppressed} more like it in the last {self._window_s:.0f} s were not logged)"
            record.suppressed, self._suppressed = self._suppressed, 0
        return True


def _why_lost(template: str, record: logging.LogRecord) -> str | None:
    """What a record of aiormq's says about a lost connection, in a few words; None if it is not such a record."""
    args = record.args if isinstance(record.args, tuple) else ()
    if template.startswith("Unexpected connection close from remote") and len(args) == 3:
        return f"the broker closed it ({args[1]} {args[2]})"
    if template.startswith("Cancelling cause reader exited abnormally"):
        exc = record.exc_info[1] if record.exc_info else None
        return (str(exc) or type(exc).__name__) if exc is not None else "the connection's reader stopped"
    if template.startswith("Server connection") and "was stuck" in template and len(args) == 2:
        return f"no frame from the broker in {args[1]} s (heartbeats missed)"
    return None


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
    secrets = (settings.auth_token, settings.secret_key, settings.security_token, settings.api_proxy)
    return [s.get_secret_value() for s in secrets if s is not None]


def _password_of(settings: Settings) -> list[str]:
    from urllib.parse import urlsplit

    password = urlsplit(settings.amqp_url.get_secret_value()).password
    return [password] if password else []


def configure_logging(settings: Settings, stream: object = None) -> logging.Handler:
    """Install one handler on the root logger per LOG_LEVEL and LOG_FORMAT (replacing the bootstrap one); return it."""
    handler = _install(settings.log_format, _secrets_of(settings), _password_of(settings), stream)
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    # aiormq logs every frame at DEBUG; keep our DEBUG readable
    logging.getLogger("aiormq").setLevel(max(logging.INFO, root.level))
    return handler


def configure_bootstrap_logging(log_format: str, stream: object = None) -> logging.Handler:
    """Until :func:`configure_logging` runs: write WARNING and above (the settings' own warnings, a fatal line) in
    ``log_format`` (:func:`snapworker.settings.log_format_from_environment`), before any setting is known."""
    return _install("json" if log_format == "json" else "console", [], [], stream)


def _install(log_format: str, secrets: list[str], passwords: list[str], stream: object) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_ConsoleFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(BrokerLossFilter())  # first: it rewrites aiormq's records into one of ours
    handler.addFilter(RepeatFilter())  # before redaction: it keys on the message template, which redaction rewrites
    handler.addFilter(RedactingFilter(secrets, passwords=passwords))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_snapworker", False):
            root.removeHandler(old)
    handler._snapworker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # with JSON lines, Python's own warnings (a DeprecationWarning) must not come as bare text either
    logging.captureWarnings(log_format == "json")
    return handler
