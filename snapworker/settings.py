"""Settings: the only place snapworker reads the environment.

Every field can be set as ``SNAPWORKER_<NAME>`` (for example ``SNAPWORKER_MAX_BATCH=50``) or passed to
``Settings(...)`` in code. Values that cannot work together are refused at start-up with a message that names them.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from snapworker.errors import ConfigError

__all__ = ["Settings", "load_settings", "log_format_from_environment", "redact_url", "unknown_variables"]

log = logging.getLogger("snapworker.settings")

# RabbitMQ's default delivery acknowledgement timeout (consumer_timeout): a message held longer is redelivered.
RABBITMQ_ACK_TIMEOUT_S = 1800.0


class Settings(BaseSettings):
    """Everything a worker needs to know, with production defaults."""

    model_config = SettingsConfigDict(env_prefix="SNAPWORKER_", frozen=True, extra="forbid", case_sensitive=False)

    # -- RabbitMQ
    amqp_url: SecretStr = Field(
        default=SecretStr("amqp://guest:guest@localhost:5672/"),
        description="Broker URL (password kept secret).",
    )
    request_queue: str = Field(default="snapworker.requests", min_length=1, max_length=255)
    result_queue: str = Field(default="snapworker.results", min_length=1, max_length=255)
    error_queue: str = Field(default="snapworker.errors", min_length=1, max_length=255)
    dead_letter_queue: str = Field(default="snapworker.dead-letter", min_length=1, max_length=255)
    queue_type: Literal["classic", "quorum"] = Field(default="classic", description="Type of the request queue.")
    delivery_limit: int = Field(default=20, ge=1, description="Quorum queues: redeliveries before dead-lettering.")
    prefetch: int = Field(
        default=1000,
        ge=1,
        le=65535,
        description="Unacked requests one worker holds at least; the window grows from here with the active keys.",
    )
    prefetch_max: int = Field(
        default=20_000,
        ge=1,
        le=65535,
        description="Most unacked requests one worker may hold (the window's ceiling, for memory).",
    )
    partitions: int = Field(
        default=16,
        ge=0,
        le=256,
        description=(
            "Route each project's requests to one of this many partition queues, each consumed by one worker, so "
            "that a fleet started with one environment still fills a project's batches in one worker; at least the "
            "number of workers (more workers than partitions only route). 0: every worker consumes the request "
            "queue directly (a lone worker saves the router's hop; see docs/fleet.md)."
        ),
    )
    urgent_prefetch: int = Field(
        default=100,
        ge=1,
        le=65535,
        description=(
            "Unacked urgent requests one worker holds from each urgent queue it consumes, on top of PREFETCH (which "
            "backlog fills): so an urgent request reaches a busy worker at once (see docs/urgent.md)."
        ),
    )
    max_message_bytes: int = Field(default=256 * 1024, ge=1024, description="Larger request bodies are invalid.")
    heartbeat_s: int = Field(default=15, ge=0, le=600)
    consumer_check_s: float = Field(default=10.0, gt=0, description="How often to check the consumer is attached.")

    # -- batching
    max_batch: int = Field(default=100, ge=1, le=100, description="Desktops per batch-create call (API max 100).")
    linger_ms: int = Field(
        default=250,
        ge=0,
        le=600_000,
        description="Wait for a batch to fill before it is ready to send (sent at once when a call is free).",
    )
    hold_max_ms: int = Field(
        default=5000,
        ge=0,
        le=600_000,
        description="Longest a ready batch that is still filling fast may wait past LINGER_MS to be sent full.",
    )
    starve_ms: int = Field(
        default=60_000,
        ge=0,
        le=3_600_000,
        description="Longest a batch that is not full waits while full batches of other keys take the calls.",
    )

    # -- Workspace API
    region: str = Field(default="cn-north-4", pattern=r"^[a-z0-9-]+$")
    api_url: str = Field(default="", description="Defaults to https://workspace.{REGION}.myhuaweicloud.com.")
    auth_token: SecretStr | None = Field(default=None, description="IAM token sent as X-Auth-Token.")
    auth_token_file: str = Field(
        default="",
        description="File holding the IAM token (a mounted secret): re-read when it changes and after a 401, so a "
        "token rotated every day needs no restart.",
    )
    project_id: str = Field(
        default="",
        pattern=r"^([0-9a-f]{32})?$",
        description="A project of the credential (32 lowercase hex characters): the worker and `check` verify the "
        "credential at start with one read in it. Unset: the credential is first tried by a request's call.",
    )
    # AK/SK also from Huawei's SDK variables (HUAWEICLOUD_SDK_*), as the SDKs, KooCLI and Terraform read them;
    # a SNAPWORKER_ variable wins over the SDK's.
    access_key: SecretStr | None = Field(  # type: ignore[pydantic-alias]  # has a default
        default=None,
        validation_alias=AliasChoices("access_key", "SNAPWORKER_ACCESS_KEY", "HUAWEICLOUD_SDK_AK"),
        description="AK for SDK-HMAC-SHA256 signing (or HUAWEICLOUD_SDK_AK).",
    )
    secret_key: SecretStr | None = Field(  # type: ignore[pydantic-alias]  # has a default
        default=None,
        validation_alias=AliasChoices("secret_key", "SNAPWORKER_SECRET_KEY", "HUAWEICLOUD_SDK_SK"),
        description="SK for SDK-HMAC-SHA256 signing (or HUAWEICLOUD_SDK_SK).",
    )
    security_token: SecretStr | None = Field(  # type: ignore[pydantic-alias]  # has a default
        default=None,
        validation_alias=AliasChoices("security_token", "SNAPWORKER_SECURITY_TOKEN", "HUAWEICLOUD_SDK_SECURITY_TOKEN"),
        description="Temporary credentials: the security token that goes with their AK/SK (X-Security-Token).",
    )
    api_ca_file: str = Field(default="", description="PEM bundle of CAs to trust for the API (default: the system's).")
    api_proxy: SecretStr | None = Field(default=None, description="HTTP(S) proxy for the API, e.g. http://proxy:3128.")
    accounts_file: str = Field(
        default="",
        description="TOML file mapping project IDs (and a default) to endpoint, credentials and rate budget.",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    rate_limit: float = Field(default=1.5, gt=0, description="API calls per second, per credential.")
    rate_burst: int = Field(default=5, ge=1, description="Calls allowed at once above the steady rate.")
    max_concurrency: int = Field(default=8, ge=1, le=256, description="API calls in flight.")
    retry_max_time_s: float = Field(
        default=300.0, gt=0, description="Retry budget of one batch, in seconds (throttled waits not counted)."
    )
    request_deadline_s: float = Field(
        default=1500.0,
        gt=0,
        description="A request still unanswered this long after it arrived fails (throttling waits until then).",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis for state a fleet shares (the rate budget of one credential); off if unset.",
    )
    retry_max_tries: int = Field(default=8, ge=1, description="Tries of one batch, the first included.")
    reconcile_delay_s: float = Field(
        default=5.0,
        ge=0,
        description="A call whose answer was lost: its desktops' snapshots are listed this long after (the API may "
        "still be recording it), and only those it did not make are sent again.",
    )
    isolate_max_extra_calls: int = Field(
        default=16,
        ge=0,
        description="Extra calls allowed to find the bad request in a rejected merged batch.",
    )

    # -- idempotency: a redelivered request never takes a second snapshot (snapworker/idempotency)
    idempotency_store: Literal["auto", "sqlite", "redis", "off"] = Field(
        default="auto",
        description="Where each request's intent and outcome are recorded: auto (redis when REDIS_URL is set, "
        "else sqlite), sqlite, redis, or off (at least once only).",
    )
    state_dir: str = Field(
        default="",
        description="Directory of the SQLite idempotency store; defaults to $XDG_STATE_HOME/snapworker "
        "(~/.local/state/snapworker).",
    )
    idempotency_ttl_s: float = Field(
        default=7 * 24 * 3600.0,
        gt=0,
        description="How long a request's record is kept (a redelivery later than this is treated as new).",
    )
    idempotency_max_records: int = Field(
        default=2_000_000, ge=1000, description="SQLite: records kept at most (the oldest go first)."
    )
    idempotency_hold_s: float = Field(
        default=5.0,
        gt=0,
        description="Store down, or another worker's call may still run: a held request is looked up again this often.",
    )
    failpoints: str = Field(
        default="",
        description="Testing only: comma-separated failpoint names at which the process kills itself (SIGKILL).",
    )

    # -- tracking jobs to their end (snapworker/tracking)
    track_jobs: bool = Field(default=True, description="Follow every created job and publish completions.")
    tracking_queue: str = Field(default="snapworker.tracking", min_length=1, max_length=200)
    tracking_queue_type: Literal["quorum", "classic"] = Field(
        default="quorum",
        description="quorum (RabbitMQ 3.10+): the tracking queue and its wait queues are quorum queues that "
        "dead-letter at least once, so a broker node crashing mid-move loses no tracking message; classic: the "
        "wait queues dead-letter at most once (for brokers before 3.10).",
    )
    completion_queue: str = Field(
        default="",
        max_length=255,
        description="Where completions of requests without reply_to go; empty: nowhere, and such requests are not "
        "tracked at all.",
    )
    completion_queue_max_length: int = Field(
        default=100_000,
        ge=0,
        description="COMPLETION_QUEUE holds at most this many completions, dropping the oldest (0: unbounded).",
    )
    track_first_poll_s: float = Field(default=10.0, gt=0, description="First look at a job after it was created.")
    track_max_poll_s: float = Field(default=60.0, gt=0, description="Polls back off (doubling) up to this.")
    track_deadline_s: float = Field(
        default=3600.0, gt=0, description="A job not finished this long after it was created ends 'unknown'."
    )
    track_prefetch: int = Field(default=32, ge=1, le=65535, description="Tracking messages one worker holds.")
    read_rate_limit: float = Field(
        default=3.0,
        gt=0,
        description="Reads (GET: job tracking and snapshot listings) per second and credential, a budget apart "
        "from batch-create's.",
    )
    read_rate_burst: int = Field(
        default=1,
        ge=1,
        description="Reads that may go at once; 1 keeps every second at READ_RATE_LIMIT reads at most.",
    )

    # -- process
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    ack_timeout_s: float = Field(
        default=RABBITMQ_ACK_TIMEOUT_S,
        gt=0,
        description="The broker's consumer_timeout, to check budgets against.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    metrics_port: int | None = Field(default=None, ge=1, le=65535, description="Prometheus and health; off if unset.")
    metrics_host: str = Field(
        default="0.0.0.0",
        min_length=1,
        description="Address the metrics and health server binds: all interfaces (what a container's port mapping "
        "and probes need); 127.0.0.1 to keep it on the host.",
    )
    progress_interval_s: float = Field(
        default=30.0, ge=0, description="A progress line at INFO this often while busy (0: never)."
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.api_url:
            # frozen model: set the derived default through object.__setattr__ once, at construction
            object.__setattr__(self, "api_url", f"https://workspace.{self.region}.myhuaweicloud.com")
        scheme = urlsplit(self.api_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"API_URL must be an http(s) URL, got {self.api_url!r}")
        if urlsplit(self.amqp_url.get_secret_value()).scheme not in ("amqp", "amqps"):
            raise ValueError("AMQP_URL must start with amqp:// or amqps://")
        if self.prefetch_max < self.prefetch:
            raise ValueError(f"PREFETCH_MAX ({self.prefetch_max}) must be at least PREFETCH ({self.prefetch})")
        if self.request_deadline_s + self.read_timeout_s >= self.ack_timeout_s:
            raise ValueError(
                f"REQUEST_DEADLINE_S + READ_TIMEOUT_S ({self.request_deadline_s + self.read_timeout_s:.0f} s) must "
                f"stay under the broker's acknowledgement timeout ACK_TIMEOUT_S ({self.ack_timeout_s:.0f} s)"
            )
        if self.redis_url is not None and urlsplit(self.redis_url.get_secret_value()).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        if self.idempotency_store == "redis" and self.redis_url is None:
            raise ValueError("IDEMPOTENCY_STORE=redis needs REDIS_URL")
        if self.prefetch < self.max_batch:
            raise ValueError(
                f"PREFETCH ({self.prefetch}) is below MAX_BATCH ({self.max_batch}): no batch could ever fill. "
                f"Set PREFETCH to at least MAX_BATCH times the number of projects you batch at once."
            )
        for name in ("auth_token", "access_key", "secret_key", "security_token", "api_proxy", "redis_url"):
            secret = getattr(self, name)
            if secret is not None and not secret.get_secret_value().strip():
                # an empty variable (SNAPWORKER_AUTH_TOKEN=) would make every API call a 401
                raise ValueError(f"{name.upper()} is set but empty: give it a value or unset it")
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("ACCESS_KEY and SECRET_KEY go together: set both or neither")
        if self.security_token is not None and self.access_key is None:
            raise ValueError(
                "SECURITY_TOKEN (temporary credentials) needs the ACCESS_KEY and SECRET_KEY issued with it"
            )
        if self.api_ca_file and not Path(self.api_ca_file).expanduser().is_file():
            raise ValueError(f"API_CA_FILE {self.api_ca_file!r} is not a readable file")
        if self.api_proxy is not None and urlsplit(self.api_proxy.get_secret_value()).scheme not in ("http", "https"):
            raise ValueError("API_PROXY must be an http:// or https:// URL")
        if self.accounts_file and not Path(self.accounts_file).expanduser().is_file():
            raise ValueError(f"ACCOUNTS_FILE {self.accounts_file!r} is not a readable file")
        if self.auth_token_file:
            token_file = Path(self.auth_token_file).expanduser()
            try:
                token = token_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"AUTH_TOKEN_FILE {self.auth_token_file!r} cannot be read: {exc}") from exc
            if not token:
                raise ValueError(f"AUTH_TOKEN_FILE {self.auth_token_file!r} is empty")
            if self.auth_token is not None:
                raise ValueError("AUTH_TOKEN and AUTH_TOKEN_FILE are both set: keep one")
            if self.access_key is not None:
                raise ValueError(
                    "two kinds of API credentials are set: remove AUTH_TOKEN_FILE to sign with "
                    "ACCESS_KEY/SECRET_KEY, or remove ACCESS_KEY and SECRET_KEY to send the IAM token"
                )
        if self.auth_token is not None and self.access_key is not None:
            raise ValueError(
                "two kinds of API credentials are set: remove AUTH_TOKEN to sign with ACCESS_KEY/SECRET_KEY, or "
                "remove ACCESS_KEY and SECRET_KEY to send the IAM token"
            )
        held_s = self.linger_ms / 1000 + self.retry_max_time_s + self.read_timeout_s
        if held_s >= self.ack_timeout_s:
            raise ValueError(
                f"LINGER_MS + RETRY_MAX_TIME_S + READ_TIMEOUT_S ({held_s:.0f} s) must stay under the broker's "
                f"acknowledgement timeout ACK_TIMEOUT_S ({self.ack_timeout_s:.0f} s), or RabbitMQ closes the "
                f"channel and redelivers every held request"
            )
        if self.track_max_poll_s < self.track_first_poll_s:
            raise ValueError(
                f"TRACK_MAX_POLL_S ({self.track_max_poll_s:g}) must be at least TRACK_FIRST_POLL_S "
                f"({self.track_first_poll_s:g})"
            )
        queues = (self.request_queue, self.result_queue, self.error_queue, self.dead_letter_queue)
        if len(set(queues)) != 4:
            raise ValueError("REQUEST_QUEUE, RESULT_QUEUE, ERROR_QUEUE and DEAD_LETTER_QUEUE must differ")
        tracking = [q for q in (self.tracking_queue, self.completion_queue) if q]  # COMPLETION_QUEUE may be unset
        if len({*queues, *tracking}) != 4 + len(tracking):
            raise ValueError("TRACKING_QUEUE and COMPLETION_QUEUE must differ from each other and the other queues")
        return self

    @property
    def linger_s(self) -> float:
        return self.linger_ms / 1000

    @property
    def hold_max_s(self) -> float:
        return self.hold_max_ms / 1000

    @property
    def starve_s(self) -> float:
        return self.starve_ms / 1000

    @property
    def auth_mode(self) -> Literal["token", "aksk", "none"]:
        if self.access_key is not None:
            return "aksk"
        return "token" if self.auth_token is not None or self.auth_token_file else "none"

    @property
    def idempotency_backend(self) -> Literal["sqlite", "redis", "off"]:
        """The idempotency store in use: IDEMPOTENCY_STORE with ``auto`` resolved."""
        if self.idempotency_store == "auto":
            return "redis" if self.redis_url is not None else "sqlite"
        return self.idempotency_store

    @property
    def state_path(self) -> Path:
        """STATE_DIR, or its default under $XDG_STATE_HOME (read here: the only place reading the environment)."""
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(xdg) / "snapworker"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus ``overrides``; raise ConfigError with readable messages.

    Unknown ``SNAPWORKER_*`` variables (a typo such as ``SNAPWORKER_LINGERMS``) are not an error, but each is
    logged as a warning with the closest setting name (see :func:`unknown_variables`).
    """
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]).upper()
            prefix = f"SNAPWORKER_{where}: " if where else ""
            problems.append(prefix + err["msg"].removeprefix("Value error, "))
        if len(problems) == 1:  # the usual case reads as one line
            raise ConfigError(f"invalid settings: {problems[0]}") from exc
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from exc


def log_format_from_environment(environ: Mapping[str, str] = os.environ) -> Literal["console", "json"]:
    """LOG_FORMAT as the environment gives it, read alone: the CLI logs in it before the settings are loaded (their
    warnings, or the line saying they are invalid). Leniently: ``JSON`` asks for JSON too, anything else console."""
    for variable, value in environ.items():
        if variable.upper() == "SNAPWORKER_LOG_FORMAT":
            return "json" if value.strip().lower() == "json" else "console"
    return "console"


#: SNAPWORKER_* variables that are not settings: the test suite's own.
_NOT_SETTINGS_PREFIXES = ("SNAPWORKER_TEST_",)
#: Settings that were removed, and why nothing takes their place.
_RETIRED = {
    "RETRY_ON_RESPONSE_TIMEOUT": "a call whose answer was lost is reconciled against the API's snapshots before "
    "anything is sent again (see SNAPWORKER_RECONCILE_DELAY_S)",
}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``SNAPWORKER_*`` variable in ``environ`` that names no setting, with a "did you mean"."""
    known = [name.upper() for name in Settings.model_fields]
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("SNAPWORKER_") or upper.startswith(_NOT_SETTINGS_PREFIXES):
            continue
        name = upper.removeprefix("SNAPWORKER_")
        if name in known:
            continue
        if name in _RETIRED:
            warnings.append(f"ignoring {variable}: the setting was retired: {_RETIRED[name]}")
            continue
        # compared without the prefix they all share, which would make any two names look alike
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean SNAPWORKER_{close[0]}?" if close else "; see README.md, Settings"
        warnings.append(f"ignoring unknown variable {variable}{hint}")
    return warnings


def redact_url(url: str) -> str:
    """The URL with its password, and only its password, replaced by ``***``, for logs (``amqp://guest:***@h/``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")  # the host as written: an IPv6 address keeps its brackets
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}"))
