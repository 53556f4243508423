"""Typed configuration: a YAML file, then environment variables over it.

Everything is validated when the config is built and every problem is reported
at once, each naming its YAML path (``api.concurrency``) or its environment
variable. Secrets are only read from the environment or from a file the config
names; they are wrapped in ``Secret`` so that no repr, log line or exception
shows them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from etl.db.dialects import SUPPORTED_URLS, normalise_url
from etl.errors import ConfigError
from etl.errors import shown as _show
from etl.files import MAX_SECRET_BYTES, group_or_other_access, read_text
from etl.yamlfile import read_yaml_file

if TYPE_CHECKING:
    from etl.api.transport import ReadLimits

DEFAULT_CONFIG_FILE = "config.yaml"
UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
PLACEHOLDER_SECRETS = {"changethis", "changeme", "your_client_secret", "secret", "xxx"}


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        """Return the secret value, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class ApiConfig:
    """Where the Smartcar API is and how to authenticate against it."""

    base_url: str = "https://vehicle.api.smartcar.com/v3"
    token_url: str = "https://iam.smartcar.com/oauth2/token"
    client_id: str | None = None
    client_secret: Secret | None = None
    access_token: Secret | None = None
    client_secret_file: str | None = None  # where client_secret was read from, if from a file
    access_token_file: str | None = None
    timeout_seconds: float = 310.0
    concurrency: int = 8
    request_deadline_seconds: float = 330.0
    retry_deadline_seconds: float = 1800.0
    max_response_bytes: int = 8 * 1024 * 1024

    def read_limits(self) -> ReadLimits:
        """The bounds on one request: its whole duration and the decoded size of its answer."""
        from etl.api.transport import ReadLimits

        return ReadLimits(deadline=self.request_deadline_seconds, max_bytes=self.max_response_bytes)

    def require_credentials(self) -> None:
        """Raise ConfigError unless client credentials or a ready token are set."""
        if (self.client_id and self.client_secret) or self.access_token:
            return
        msg = ("no API credentials: set SMARTCAR_CLIENT_ID and SMARTCAR_CLIENT_SECRET "
               "(or api.client_id and api.client_secret_file), or SMARTCAR_ACCESS_TOKEN")
        raise ConfigError(msg)


@dataclass(frozen=True)
class RetryConfig:
    """How failed requests are retried."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 60.0
    max_retry_after_seconds: float = 300.0


@dataclass(frozen=True)
class RateLimitConfig:
    """The client-side token bucket; Smartcar's documented default is 120 requests, refilled at 2 a minute."""

    capacity: int = 120
    per_minute: float = 2.0
    key: str | None = None  # the bucket in the database; default: the client id


@dataclass(frozen=True)
class SyncConfig:
    """How a pass lists, fetches and stores."""

    batch_size: int = 500
    strategy: str = "auto"
    page_size: int = 100
    track_listed: bool = False  # tracking what a listing shows is an explicit choice
    max_duration_seconds: float | None = None  # None: sync takes schedule.interval (or the next cron firing)
    if_locked: str = "fail"  # fail: exit 4 when another run holds the lock; skip: exit 0
    max_deleted_share: float = 0.5  # more 404s of live connections than this share of the answers: none stored
    outage_after: int = 10  # connections in a row failing with server or network errors: the pass stops
    flush_seconds: float = 10.0  # an answer waits at most this long to be stored, even in a batch not yet full
    progress_interval_seconds: float = 30.0  # a long pass logs how it is doing this often
    stop_timeout_seconds: float = 10.0  # after SIGTERM or SIGINT, what requests in flight may take


@dataclass(frozen=True)
class ScheduleConfig:
    """When passes run (daemon) and when each connection is due again (daemon and sync)."""

    interval_seconds: float = 900.0
    cron: str | None = None
    misfire_grace_seconds: int = 300
    retry_failed_after_seconds: float = 300.0
    retry_failed_max_seconds: float = 6 * 3600.0
    recheck_deleted_seconds: float = 86400.0


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon stops and where it serves metrics."""

    stop_timeout_seconds: float = 30.0
    metrics_listen: str | None = "127.0.0.1:9464"


@dataclass(frozen=True)
class MetricsConfig:
    """Where one-shot runs write Prometheus metrics (node_exporter's textfile collector)."""

    textfile: str | None = None


@dataclass(frozen=True)
class ArchiveConfig:
    """Whether every document the API sends is archived (``archive show``, ``rebuild``)."""

    enabled: bool = True


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format (stderr)."""

    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    """The whole configuration of smartcar-etl."""

    database_url: str = "sqlite:///smartcar_etl.db"
    api: ApiConfig = field(default_factory=ApiConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    source: str = "built-in defaults"
    # dotted key -> (default | file | environment | option, the variable or option's name); absent: default
    sources: Mapping[str, tuple[str, str | None]] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # not errors: each command logs them


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STRATEGIES = ("auto", "ids", "list")
LOG_FORMATS = ("text", "json")
IF_LOCKED = ("fail", "skip")

# The YAML schema: section -> key -> parser. Parsers take (path, value, errors)
# and return the parsed value or None after appending to errors.
_Parser = Callable[[str, Any, list[str]], Any]


def _number(low: float, high: float, *, whole: bool = False) -> _Parser:
    """A parser for a finite number in [low, high]; ``whole``: an integer."""
    kind = "a whole number" if whole else "a number"

    def parse(path: str, value: Any, errors: list[str]) -> float | int | None:
        ok = not isinstance(value, bool) and isinstance(value, int if whole else int | float)
        if not ok or not (math.isfinite(value) and low <= value <= high):
            errors.append(f"{path}: expected {kind} from {low:g} to {high:g}, got {_show(value)}")
            return None
        return int(value) if whole else float(value)

    return parse


def _name(key: Any) -> str:
    """A YAML key as written, if it is a short printable string; else its clipped repr."""
    if isinstance(key, str) and len(key) <= 60 and not UNPRINTABLE_RE.search(key):
        return key
    return _show(key)


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _boolean(path: str, value: Any, errors: list[str]) -> bool | None:
    if not isinstance(value, bool):
        errors.append(f"{path}: expected true or false, got {_show(value)}")
        return None
    return value


def _string(path: str, value: Any, errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip() or len(value) > 4096 or UNPRINTABLE_RE.search(value.strip()):
        errors.append(f"{path}: expected a non-empty string of printable characters, got {_show(value)}")
        return None
    return value.strip()


def _short_string(path: str, value: Any, errors: list[str]) -> str | None:
    text = _string(path, value, errors)
    if text is not None and len(text) > 200:
        errors.append(f"{path}: at most 200 characters, got {len(text)}")
        return None
    return text


def _choice(choices: tuple[str, ...], *, upper: bool = False) -> _Parser:
    def parse(path: str, value: Any, errors: list[str]) -> str | None:
        text = value.upper() if upper and isinstance(value, str) else value
        if text not in choices:
            errors.append(f"{path}: expected one of {', '.join(choices)}, got {_show(value)}")
            return None
        return str(text)

    return parse


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)")


def parse_duration(text: str) -> float | None:
    """Seconds from ``90s``, ``15m``, ``1h``, ``1d`` (or a bare number of seconds); None if unreadable.

    Only plain decimal numbers are read: no exponent, infinity or NaN.
    """
    match = DURATION_RE.fullmatch(text.strip().lower()) if len(text) <= 32 else None
    if match is None:
        return None
    return float(match.group(1)) * DURATION_UNITS.get(match.group(2) or "s", 1)


def _duration(low: float, high: float, *, whole: bool = False) -> _Parser:
    """A parser for a duration (``90s``, ``15m``, or a number of seconds) within [low, high] seconds."""

    def parse(path: str, value: Any, errors: list[str]) -> float | int | None:
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str):
            seconds = parse_duration(value)
        if seconds is None or not math.isfinite(seconds) or not low <= seconds <= high or (
                whole and seconds != int(seconds)):
            errors.append(f"{path}: expected a duration like 90s, 15m, 1h or 1d, from {_span(low)} to "
                          f"{_span(high)}{' in whole seconds' if whole else ''}, got {_show(value)}")
            return None
        return int(seconds) if whole else seconds

    return parse


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _cron(path: str, value: Any, errors: list[str]) -> str | None:
    from apscheduler.triggers.cron import CronTrigger

    text = _string(path, value, errors)
    if text is None:
        return None
    try:
        trigger = CronTrigger.from_crontab(text, timezone=dt.UTC)
    except ValueError as exc:
        errors.append(f"{path}: not a crontab expression ({_clip(str(exc))}): {_show(text)}")
        return None
    if trigger.get_next_fire_time(None, dt.datetime.now(dt.UTC)) is None:  # 31 February: a daemon that never runs
        errors.append(f"{path}: {_show(text)} never fires")
        return None
    return text


def _listen(path: str, value: Any, errors: list[str]) -> str | None:
    text = _string(path, value, errors)
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        errors.append(f"{path}: expected host:port, got {_show(text)}")
        return None
    return text


def _file_secret(path: str, value: Any, errors: list[str]) -> Secret | None:
    if not isinstance(value, str) or not value.strip():
        errors.append(f"{path}: expected the name of a file holding the secret")
        return None
    # The value is never echoed: a secret pasted here by mistake must not reach the output.
    try:
        text = read_text(value.strip(), where=f"{path} (the file it names)", limit=MAX_SECRET_BYTES).strip()
    except ConfigError as error:
        errors.extend(error.errors)
        return None
    return _check_secret(path, text, errors)


def _check_secret(where: str, text: str, errors: list[str]) -> Secret | None:
    if not text:
        errors.append(f"{where}: the secret is empty")
        return None
    if UNPRINTABLE_RE.search(text) or len(text) > 4096:
        errors.append(f"{where}: the secret holds control characters or is longer than 4096 characters")
        return None
    if text.lower() in PLACEHOLDER_SECRETS or (text.startswith("<") and text.endswith(">")):
        # Never echo the value itself, even a placeholder: it may be a real secret.
        errors.append(f"{where}: looks like a placeholder, not a real secret")
        return None
    return Secret(text)


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_url(path: str, value: Any, errors: list[str]) -> str | None:
    text = _string(path, value, errors)
    if text is None:
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:  # "Invalid IPv6 URL": the text may hold credentials, so it is not echoed
        errors.append(f"{path}: not a URL (expected https://HOST/PATH)")
        return None
    if "@" in parts.netloc or parts.query:
        # Neither is echoed: user:password@ or ?token= in a URL is a secret in the wrong place.
        errors.append(f"{path}: must not carry credentials (user:password@) or a query string; credentials "
                      "are read from SMARTCAR_CLIENT_ID and SMARTCAR_CLIENT_SECRET")
        return None
    if parts.scheme == "http" and not is_loopback_host(host):
        errors.append(f"{path}: plain http:// is accepted only for loopback addresses, got {_show(text)}")
        return None
    if parts.scheme not in ("http", "https") or not host:
        errors.append(f"{path}: expected an https:// URL, got {_show(text)}")
        return None
    return text.rstrip("/")


def _database_url(path: str, value: Any, errors: list[str]) -> str | None:
    if not isinstance(value, str) or not value.strip() or UNPRINTABLE_RE.search(value.strip()):
        # Not echoed: a URL may carry a password.
        errors.append(f"{path}: expected a database URL ({SUPPORTED_URLS})")
        return None
    try:
        return normalise_url(value.strip())
    except ValueError as exc:
        errors.append(f"{path}: {exc}")
        return None


DAY = 86400.0


@dataclass(frozen=True)
class Key:
    """One config key: where it lives in the YAML, the attribute it sets, how it is read and documented.

    ``kind`` says how an environment variable's text is read before the parser checks it:
    ``number``, ``whole`` (an integer), ``bool`` or ``text`` (durations are text: ``15m``).
    """

    section: str
    key: str
    attr: str
    parser: _Parser
    help: str
    kind: str = "text"
    aliases: tuple[str, ...] = ()  # older environment variables that still work

    @property
    def dotted(self) -> str:
        """``section.key``, as error messages and ``config show`` name it."""
        return f"{self.section}.{self.key}"

    @property
    def variable(self) -> str:
        """The environment variable: ``SMARTCAR_ETL_<SECTION>_<KEY>``."""
        return f"SMARTCAR_ETL_{self.section}_{self.key}".upper()


# Every key, in the order of config.example.yaml. Every number and duration has a range, listed here,
# in config.example.yaml and in the README's table (generated from this list).
KEYS: tuple[Key, ...] = (
    Key("database", "url", "database_url", _database_url,
        "SQLAlchemy URL: `sqlite:///PATH`, `postgresql+psycopg://…` (plain `postgresql://` is read with psycopg 3), "
        "`mariadb://…` or `mysql://…` (read with PyMySQL; MariaDB 10.5 or newer)"),
    Key("api", "base_url", "base_url", _api_url, "Vehicle API v3 base; `http://` only for loopback",
        aliases=("SMARTCAR_API_BASE_URL",)),
    Key("api", "token_url", "token_url", _api_url, "client-credentials token endpoint; `http://` only for loopback",
        aliases=("SMARTCAR_TOKEN_URL",)),
    Key("api", "client_id", "client_id", _string, "application client id (goes with a client secret)",
        aliases=("SMARTCAR_CLIENT_ID",)),
    Key("api", "client_secret_file", "client_secret", _file_secret,
        "a file holding the client secret (else `SMARTCAR_CLIENT_SECRET`)"),
    Key("api", "access_token_file", "access_token", _file_secret,
        "a file holding a ready bearer token, used without client credentials (else `SMARTCAR_ACCESS_TOKEN`)"),
    Key("api", "timeout_seconds", "timeout_seconds", _number(0.1, 3600),
        "seconds to wait for bytes of an answer, 0.1-3600", kind="number"),
    Key("api", "concurrency", "concurrency", _number(1, 256, whole=True), "requests in flight at most, 1-256",
        kind="whole"),
    Key("api", "request_deadline", "request_deadline_seconds", _duration(1, 6 * 3600),
        "the whole of one request, 1s-6h, at least `api.timeout_seconds`"),
    Key("api", "retry_deadline", "retry_deadline_seconds", _duration(1, DAY),
        "one request with all its retries, 1s-1d, at least `api.request_deadline`"),
    Key("api", "max_response_bytes", "max_response_bytes", _number(1024, 1024**3, whole=True),
        "largest answer read, decoded, 1024 bytes to 1 GiB", kind="whole"),
    Key("retry", "max_attempts", "max_attempts", _number(1, 100, whole=True),
        "attempts per request for 429, 5xx, timeouts and network errors, 1-100", kind="whole"),
    Key("retry", "initial_backoff_seconds", "initial_backoff_seconds", _number(0, 3600),
        "first backoff, 0-3600 seconds, doubling up to `retry.max_backoff_seconds`", kind="number"),
    Key("retry", "max_backoff_seconds", "max_backoff_seconds", _number(0, DAY), "longest backoff, 0-86400 seconds",
        kind="number"),
    Key("retry", "max_retry_after_seconds", "max_retry_after_seconds", _number(0, DAY),
        "a `Retry-After` is honoured up to this, 0-86400 seconds", kind="number"),
    Key("rate_limit", "capacity", "capacity", _number(1, 10_000_000, whole=True),
        "the application's request bucket, 1-10,000,000", kind="whole"),
    Key("rate_limit", "per_minute", "per_minute", _number(0.001, 10_000_000),
        "its refill a minute, 0.001-10,000,000", kind="number"),
    Key("rate_limit", "key", "key", _short_string,
        "the bucket's name in the database (default: the client id), at most 200 characters"),
    Key("sync", "batch_size", "batch_size", _number(1, 10_000, whole=True),
        "connections written per transaction, 1-10,000", kind="whole"),
    Key("sync", "strategy", "strategy", _choice(STRATEGIES),
        "`ids`, `list` or `auto` (whichever needs fewer requests)"),
    Key("sync", "page_size", "page_size", _number(1, 100, whole=True), "listing page size, 1-100", kind="whole"),
    Key("sync", "track_listed", "track_listed", _boolean,
        "`true`: a sync that lists also tracks connections it has not seen before", kind="bool"),
    Key("sync", "max_duration", "max_duration_seconds", _duration(1, 30 * DAY),
        "start no request that cannot finish within this, 1s-30d (default: the schedule's period)"),
    Key("sync", "if_locked", "if_locked", _choice(IF_LOCKED),
        "when another run holds the lock: `fail` (exit 4) or `skip` (exit 0)"),
    Key("sync", "max_deleted_share", "max_deleted_share", _number(0, 1),
        "a pass that would mark more than this share of the connections it had an answer for deleted marks "
        "none, 0-1", kind="number"),
    Key("sync", "outage_after", "outage_after", _number(1, 1_000_000, whole=True),
        "a pass stops asking after this many connections in a row failed with server or network errors, "
        "1-1,000,000", kind="whole"),
    Key("sync", "flush_seconds", "flush_seconds", _number(0.1, 3600),
        "an answer is stored within this many seconds, even in a batch not yet full, 0.1-3600", kind="number"),
    Key("sync", "progress_interval", "progress_interval_seconds", _duration(1, DAY),
        "a pass logs how it is doing this often: sent, stored, failed, left, the budget, the expected end, 1s-1d"),
    Key("sync", "stop_timeout", "stop_timeout_seconds", _duration(0.1, 3600),
        "sync and backfill: after SIGTERM or SIGINT, how long requests in flight may take, 0.1s-1h"),
    Key("schedule", "interval", "interval_seconds", _duration(1, 30 * DAY),
        "how often each connection is fetched (and the daemon runs a pass), 1s-30d"),
    Key("schedule", "cron", "cron", _cron, "daemon: a crontab expression (UTC) instead of the interval"),
    # APScheduler takes whole seconds here.
    Key("schedule", "misfire_grace", "misfire_grace_seconds", _duration(1, DAY, whole=True),
        "daemon: a pass missed by at most this still runs, 1s-1d, whole seconds"),
    Key("schedule", "retry_failed_after", "retry_failed_after_seconds", _duration(1, 30 * DAY),
        "a failing connection waits this long, doubling each time, 1s-30d"),
    Key("schedule", "retry_failed_max", "retry_failed_max_seconds", _duration(1, 365 * DAY),
        "...up to this, 1s-365d"),
    Key("schedule", "recheck_deleted_every", "recheck_deleted_seconds", _duration(1, 365 * DAY),
        "a deleted connection is re-checked this often, 1s-365d"),
    Key("daemon", "stop_timeout", "stop_timeout_seconds", _duration(0.1, 3600),
        "after SIGTERM, how long requests in flight may take, 0.1s-1h"),
    Key("daemon", "metrics_listen", "metrics_listen", _listen,
        "Prometheus `/metrics` at host:port; `off` (null in YAML) turns it off"),
    Key("metrics", "textfile", "textfile", _string, "one-shot runs write Prometheus metrics to this file"),
    Key("archive", "enabled", "enabled", _boolean, "keep every document the API sends", kind="bool"),
    Key("logging", "level", "level", _choice(LOG_LEVELS, upper=True), "`DEBUG`, `INFO`, `WARNING` or `ERROR`"),
    Key("logging", "format", "format", _choice(LOG_FORMATS), "`text` or `json` (JSON lines), on stderr"),
)
_SCHEMA: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    _SCHEMA.setdefault(_key.section, {})[_key.key] = _key


def parse_setting(dotted: str, value: Any, *, where: str) -> Any:
    """One setting (``schedule.interval``) checked as the config file's would be; ConfigError names ``where``."""
    section, key = dotted.split(".", 1)
    errors: list[str] = []
    parsed = _SCHEMA[section][key].parser(where, value, errors)
    if errors:
        raise ConfigError(errors)
    return parsed


_SECRET_KEYS = {"client_secret": "client_secret_file", "access_token": "access_token_file"}
# Secrets themselves come only from these variables (or from the files the *_file keys name).
SECRET_VARIABLES = {"SMARTCAR_CLIENT_SECRET": "client_secret", "SMARTCAR_ACCESS_TOKEN": "access_token"}
NUMBER_RE = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _from_text(key: Key, text: str) -> Any:
    """An environment variable's text as the config file would hold it; the key's parser judges the result."""
    text = text.strip()
    # 40 digits are more than any range here; int() of thousands would raise instead of the parser naming it
    if key.kind in ("number", "whole") and len(text) <= 40 and NUMBER_RE.fullmatch(text):
        return float(text) if "." in text else int(text)
    if key.kind == "bool" and text.lower() in TRUE_WORDS + FALSE_WORDS:
        return text.lower() in TRUE_WORDS
    return text


def find_config_file(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """Pick the config file: --config, else $SMARTCAR_ETL_CONFIG, else ./config.yaml."""
    for where, name in (("--config", explicit), ("SMARTCAR_ETL_CONFIG", env.get("SMARTCAR_ETL_CONFIG"))):
        if name:
            path = Path(name).expanduser()
            if not path.is_file():
                msg = f"{where}: config file {name} does not exist"
                raise ConfigError(msg)
            return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


DEFAULT, FILE, ENVIRONMENT, OPTION = "default", "file", "environment", "option"


@dataclass
class _Loading:
    """Values parsed so far (section -> attribute -> value), where each came from, and every problem."""

    values: dict[str, dict[str, Any]] = field(default_factory=lambda: {section: {} for section in _SCHEMA})
    sources: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def set(self, key: Key, value: Any, where: str, source: str) -> None:
        """Parse ``value`` for ``key`` (an error names ``where``) and record it with its source."""
        parsed = key.parser(where, value, self.errors) if value is not None else None
        if parsed is None and value is not None:
            return
        self.values[key.section][key.attr] = parsed
        self.sources[key.dotted] = (source, where)  # where: the variable, option or dotted key in the file
        if key.key in _SECRET_KEYS.values():  # the file's name is no secret; the secret is its content
            self.values["api"][key.key] = str(value).strip()
            self.sources[f"api.{key.attr}"] = (source, where)
            mode = group_or_other_access(str(value).strip())
            if mode is not None:  # as ssh says of a private key; the file's name is not echoed either
                self.warnings.append(f"{where}: the secret's file is open to its group or others (mode "
                                     f"{mode:04o}); chmod 600 it")

    def secret(self, variable: str, text: str) -> None:
        attr = SECRET_VARIABLES[variable]
        secret = _check_secret(variable, text.strip(), self.errors)
        if secret is not None:
            self.values["api"][attr] = secret
            self.sources[f"api.{attr}"] = (ENVIRONMENT, variable)


def _take_file(raw: Mapping[Any, Any], loading: _Loading) -> None:
    errors = loading.errors
    for section, body in raw.items():
        if section not in _SCHEMA:
            errors.append(f"{_name(section)}: unknown section (expected one of {', '.join(_SCHEMA)})")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            errors.append(f"{section}: expected a mapping")
            continue
        for name, value in body.items():
            if section == "api" and name in _SECRET_KEYS:
                errors.append(f"api.{name}: secrets are not read from the config file; set "
                              f"the environment variable or api.{_SECRET_KEYS[name]}")
            elif name not in _SCHEMA[section]:
                errors.append(f"{section}.{_name(name)}: unknown key")
            elif value is not None or (section, name) == ("daemon", "metrics_listen"):  # null: metrics off
                key = _SCHEMA[section][name]
                loading.set(key, value, key.dotted, FILE)


OFF_WORDS = ("off", "none", "null")


def _take_environment(env: Mapping[str, str], loading: _Loading) -> None:
    for key in KEYS:
        given = {name: env[name] for name in (key.variable, *key.aliases) if env.get(name, "").strip()}
        if len({text.strip() for text in given.values()}) > 1:
            loading.errors.append(f"{' and '.join(given)} are both set and differ (they are the same setting, "
                                  f"{key.dotted}): unset one")
        elif given:
            name, text = next(iter(given.items()))
            off = key.dotted == "daemon.metrics_listen" and text.strip().lower() in OFF_WORDS
            loading.set(key, None if off else _from_text(key, text), name, ENVIRONMENT)
    for variable in SECRET_VARIABLES:
        if env.get(variable, "").strip():
            loading.secret(variable, env[variable])
    for attr in SECRET_VARIABLES.values():
        variable = f"SMARTCAR_ETL_API_{attr.upper()}"
        if env.get(variable):  # never echoed: it holds a secret
            loading.errors.append(f"{variable}: secrets are read from "
                                  f"{next(v for v, a in SECRET_VARIABLES.items() if a == attr)} or "
                                  f"{variable}_FILE, not from this variable")


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Config:
    """Build the config from defaults, a YAML file, the environment and options, in that order of precedence
    (the last wins); raise ConfigError listing all problems.

    ``overrides`` maps dotted keys (``logging.level``) to values from the command line; ``option_names``
    names their options (``--log-level``) for error messages and ``config show``.
    """
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    loading = _Loading()
    if file is not None:
        _take_file(read_yaml_file(file), loading)
    _take_environment(env, loading)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            section, name = dotted.split(".", 1)
            loading.set(_SCHEMA[section][name], value, (option_names or {}).get(dotted, dotted), OPTION)
    values, errors = loading.values, loading.errors
    if bool(values["api"].get("client_id")) != bool(values["api"].get("client_secret")):
        errors.append("api: client_id and client_secret go together (SMARTCAR_CLIENT_ID, "
                      "SMARTCAR_CLIENT_SECRET or api.client_secret_file)")
    api = values["api"]
    if api.get("request_deadline_seconds", 330.0) < api.get("timeout_seconds", 310.0):
        errors.append("api.request_deadline: must be at least api.timeout_seconds")
    if api.get("retry_deadline_seconds", 1800.0) < api.get("request_deadline_seconds", 330.0):
        errors.append("api.retry_deadline: must be at least api.request_deadline")
    retry = values["retry"]
    if retry.get("initial_backoff_seconds", 0.5) > retry.get("max_backoff_seconds", 60.0):
        errors.append("retry.initial_backoff_seconds: must not exceed retry.max_backoff_seconds")
    schedule = values["schedule"]
    if schedule.get("retry_failed_after_seconds", 300.0) > schedule.get("retry_failed_max_seconds", 21600.0):
        errors.append("schedule.retry_failed_after: must not exceed schedule.retry_failed_max")
    if errors:
        raise ConfigError(errors)
    return Config(
        database_url=values["database"].get("database_url", Config.database_url),
        api=ApiConfig(**values["api"]),
        retry=RetryConfig(**values["retry"]),
        rate_limit=RateLimitConfig(**values["rate_limit"]),
        sync=SyncConfig(**values["sync"]),
        schedule=ScheduleConfig(**values["schedule"]),
        daemon=DaemonConfig(**values["daemon"]),
        metrics=MetricsConfig(**values["metrics"]),
        logging=LoggingConfig(**values["logging"]),
        archive=ArchiveConfig(**values["archive"]),
        source=str(file) if file else "built-in defaults",
        sources=loading.sources,
        warnings=tuple(loading.warnings),
    )


def _value(config: Config, key: Key) -> Any:
    if key.section == "database":
        return config.database_url
    section = getattr(config, key.section)
    if key.key in _SECRET_KEYS.values():
        return getattr(section, key.key)  # the file's name, not the secret
    return getattr(section, key.attr)


def effective_settings(config: Config) -> list[dict[str, Any]]:
    """Every setting's effective value and where it came from, for ``config show``; secrets as set or unset.

    Each row: ``key`` (dotted), ``value``, ``source`` (default, file, environment, option) and ``origin``
    (the variable or option that set it, or the config file).
    """
    rows = []
    for key in KEYS:
        rows.append(_row(config, key.dotted, _value(config, key)))
        if key.key in _SECRET_KEYS.values():
            dotted = f"api.{key.attr}"
            rows.append(_row(config, dotted, "set" if getattr(config.api, key.attr) is not None else "unset"))
    return rows


def _row(config: Config, dotted: str, value: Any) -> dict[str, Any]:
    source, origin = config.sources.get(dotted, (DEFAULT, None))
    if source == FILE:
        origin = config.source
    return {"key": dotted, "value": value, "source": source, "origin": origin}


def variables_table() -> list[str]:
    """The README's table of environment variables, generated from ``KEYS`` (a test keeps the README equal)."""
    defaults = Config()
    lines = ["| variable | key | default | meaning |", "|---|---|---|---|"]
    for key in KEYS:
        default = _value(defaults, key)
        shown = "none" if default is None else f"`{_default_text(key, default)}`"
        names = ", ".join(f"`{name}`" for name in (key.variable, *key.aliases))
        lines.append(f"| {names} | `{key.dotted}` | {shown} | {key.help} |")
    for variable, attr in SECRET_VARIABLES.items():
        lines.append(f"| `{variable}` | (secret) | none | the {attr.replace('_', ' ')}; "
                     f"or name a file in `api.{attr}_file` |")
    return lines


def setting_text(dotted: str, value: Any) -> str:
    """A setting's value as people write it in the config file: a duration as ``15m``, ``true``, ``null``."""
    section, _, name = dotted.partition(".")
    key = _SCHEMA.get(section, {}).get(name)
    if value is None:
        return "null"
    return _default_text(key, value) if key is not None else str(value)


def _default_text(key: Key, value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float) and key.kind == "text":  # a duration
        return _span(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


# SMARTCAR_ETL_ variables that are not config keys but are read (or refused) on purpose.
OTHER_VARIABLES = {"SMARTCAR_ETL_CONFIG", *(f"SMARTCAR_ETL_API_{attr.upper()}" for attr in SECRET_VARIABLES.values())}


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``SMARTCAR_ETL_*`` variables that set nothing (a typo?), each with the nearest real name.

    Not an error: a Kubernetes Service named smartcar-etl puts ``SMARTCAR_ETL_SERVICE_HOST`` and the
    like into every pod of its namespace.
    """
    import difflib

    known = {name for key in KEYS for name in (key.variable, *key.aliases)} | OTHER_VARIABLES
    found = []
    for name in sorted(env):
        if name.startswith("SMARTCAR_ETL_") and name not in known:
            near = difflib.get_close_matches(name, sorted(known), n=1)
            found.append(_name(name) + (f" (did you mean {near[0]}?)" if near else ""))
    return found
