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

import yaml

from etl.db.dialects import SUPPORTED_URLS, normalise_url
from etl.errors import ConfigError
from etl.files import MAX_CONFIG_BYTES, MAX_SECRET_BYTES, read_text

if TYPE_CHECKING:
    from etl.api.client import ReadLimits

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
    timeout_seconds: float = 310.0
    concurrency: int = 8
    request_deadline_seconds: float = 330.0
    retry_deadline_seconds: float = 1800.0
    max_response_bytes: int = 8 * 1024 * 1024

    def read_limits(self) -> ReadLimits:
        """The bounds on one request: its whole duration and the decoded size of its answer."""
        from etl.api.client import ReadLimits

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
    track_listed: bool = True
    max_duration_seconds: float | None = None  # None: sync takes schedule.interval (or the next cron firing)


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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STRATEGIES = ("auto", "ids", "list")
LOG_FORMATS = ("text", "json")

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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _boolean(path: str, value: Any, errors: list[str]) -> bool | None:
    if not isinstance(value, bool):
        errors.append(f"{path}: expected true or false, got {value!r}")
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
        CronTrigger.from_crontab(text, timezone=dt.UTC)
    except ValueError as exc:
        errors.append(f"{path}: not a crontab expression ({exc}): {text!r}")
        return None
    return text


def _listen(path: str, value: Any, errors: list[str]) -> str | None:
    text = _string(path, value, errors)
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        errors.append(f"{path}: expected host:port, got {text!r}")
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
    parts = urlsplit(text)
    if parts.scheme == "https" and parts.hostname:
        pass
    elif parts.scheme == "http" and is_loopback_host(parts.hostname):
        pass
    elif parts.scheme == "http":
        errors.append(f"{path}: plain http:// is accepted only for loopback addresses, got {text!r}")
        return None
    else:
        errors.append(f"{path}: expected an https:// URL, got {text!r}")
        return None
    if parts.query or parts.username or parts.password:
        errors.append(f"{path}: must not carry a query string or credentials")
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
# The YAML schema: section -> key -> (attribute, parser). Every number and duration has a range,
# listed in config.example.yaml and the README.
_SCHEMA: dict[str, dict[str, tuple[str, _Parser]]] = {
    "database": {"url": ("database_url", _database_url)},
    "api": {
        "base_url": ("base_url", _api_url),
        "token_url": ("token_url", _api_url),
        "client_id": ("client_id", _string),
        "client_secret_file": ("client_secret", _file_secret),
        "access_token_file": ("access_token", _file_secret),
        "timeout_seconds": ("timeout_seconds", _number(0.1, 3600)),
        "concurrency": ("concurrency", _number(1, 256, whole=True)),
        "request_deadline": ("request_deadline_seconds", _duration(1, 6 * 3600)),
        "retry_deadline": ("retry_deadline_seconds", _duration(1, DAY)),
        "max_response_bytes": ("max_response_bytes", _number(1024, 1024**3, whole=True)),
    },
    "retry": {
        "max_attempts": ("max_attempts", _number(1, 100, whole=True)),
        "initial_backoff_seconds": ("initial_backoff_seconds", _number(0, 3600)),
        "max_backoff_seconds": ("max_backoff_seconds", _number(0, DAY)),
        "max_retry_after_seconds": ("max_retry_after_seconds", _number(0, DAY)),
    },
    "rate_limit": {
        "capacity": ("capacity", _number(1, 10_000_000, whole=True)),
        "per_minute": ("per_minute", _number(0.001, 10_000_000)),
        "key": ("key", _short_string),
    },
    "sync": {
        "batch_size": ("batch_size", _number(1, 10_000, whole=True)),
        "strategy": ("strategy", _choice(STRATEGIES)),
        "page_size": ("page_size", _number(1, 100, whole=True)),
        "track_listed": ("track_listed", _boolean),
        "max_duration": ("max_duration_seconds", _duration(1, 30 * DAY)),
    },
    "schedule": {
        "interval": ("interval_seconds", _duration(1, 30 * DAY)),
        "cron": ("cron", _cron),
        # APScheduler takes whole seconds here.
        "misfire_grace": ("misfire_grace_seconds", _duration(1, DAY, whole=True)),
        "retry_failed_after": ("retry_failed_after_seconds", _duration(1, 30 * DAY)),
        "retry_failed_max": ("retry_failed_max_seconds", _duration(1, 365 * DAY)),
        "recheck_deleted_every": ("recheck_deleted_seconds", _duration(1, 365 * DAY)),
    },
    "daemon": {
        "stop_timeout": ("stop_timeout_seconds", _duration(0.1, 3600)),
        "metrics_listen": ("metrics_listen", _listen),
    },
    "metrics": {"textfile": ("textfile", _string)},
    "archive": {"enabled": ("enabled", _boolean)},
    "logging": {
        "level": ("level", _choice(LOG_LEVELS, upper=True)),
        "format": ("format", _choice(LOG_FORMATS)),
    },
}


def parse_setting(dotted: str, value: Any, *, where: str) -> Any:
    """One setting (``schedule.interval``) checked as the config file's would be; ConfigError names ``where``."""
    section, key = dotted.split(".", 1)
    errors: list[str] = []
    parsed = _SCHEMA[section][key][1](where, value, errors)
    if errors:
        raise ConfigError(errors)
    return parsed


_SECRET_KEYS = {"client_secret": "client_secret_file", "access_token": "access_token_file"}

_ENV: dict[str, tuple[str, str, _Parser]] = {
    "SMARTCAR_ETL_DATABASE_URL": ("database", "url", _database_url),
    "SMARTCAR_API_BASE_URL": ("api", "base_url", _api_url),
    "SMARTCAR_TOKEN_URL": ("api", "token_url", _api_url),
    "SMARTCAR_CLIENT_ID": ("api", "client_id", _string),
}
_ENV_SECRETS = {"SMARTCAR_CLIENT_SECRET": "client_secret", "SMARTCAR_ACCESS_TOKEN": "access_token"}


def _clip_yaml_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) if isinstance(exc, yaml.YAMLError) else "nested too deeply"
    return text if len(text) <= 300 else text[:299] + "…"


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


def load_config(
    path: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the config from a YAML file and the environment; raise ConfigError listing all problems.

    ``overrides`` maps dotted keys (``logging.level``) to values from the command line.
    """
    env = os.environ if env is None else env
    file = find_config_file(path, env)
    raw: Any = {}
    if file is not None:
        text = read_text(str(file), where=f"config file {file}", limit=MAX_CONFIG_BYTES)
        try:
            raw = yaml.safe_load(text) or {}
        except (yaml.YAMLError, RecursionError) as exc:
            msg = f"{file}: cannot read YAML: {_clip_yaml_error(exc)}"
            raise ConfigError(msg) from None
        if not isinstance(raw, dict):
            msg = f"{file}: expected a mapping at the top level"
            raise ConfigError(msg)
    errors: list[str] = []
    values: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}
    for section, body in raw.items():
        if section not in _SCHEMA:
            errors.append(f"{_name(section)}: unknown section (expected one of {', '.join(_SCHEMA)})")
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            errors.append(f"{section}: expected a mapping")
            continue
        for key, value in body.items():
            if section == "api" and key in _SECRET_KEYS:
                errors.append(f"api.{key}: secrets are not read from the config file; set "
                              f"the environment variable or api.{_SECRET_KEYS[key]}")
                continue
            if key not in _SCHEMA[section]:
                errors.append(f"{section}.{_name(key)}: unknown key")
                continue
            attr, parser = _SCHEMA[section][key]
            if value is None:
                if (section, key) == ("daemon", "metrics_listen"):
                    values[section][attr] = None  # null turns the metrics endpoint off
                continue
            parsed = parser(f"{section}.{key}", value, errors)
            if parsed is not None:
                values[section][attr] = parsed
    for var, (section, key, parser) in _ENV.items():
        if env.get(var):
            parsed = parser(var, env[var], errors)
            if parsed is not None:
                values[section][_SCHEMA[section][key][0]] = parsed
    for var, attr in _ENV_SECRETS.items():
        if env.get(var):
            secret = _check_secret(var, env[var].strip(), errors)
            if secret is not None:
                values["api"][attr] = secret
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        attr, parser = _SCHEMA[section][key]
        parsed = parser(dotted, value, errors)
        if parsed is not None:
            values[section][attr] = parsed
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
    )
