"""The configuration schema: the dataclasses ARE the schema, each key declared once with ``setting``.

A key's default, parser (its type and range), help text, YAML name and environment variable sit in one
``setting(...)`` on the field it sets; ``Schema.of(Config)`` derives the sections and ``KEYS`` from the
fields, in their order (which is the order of config.example.yaml). A section is a field declared with
``section(Cls)``; a list-valued section (``applications: [{name: ..., ...}, ...]``) is declared with
``entries(Cls)``, its entries' keys by the same ``setting`` declarations on ``Cls``. A section's
cross-field checks are its ``problems(where)`` method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from etl.config import parsers as p
from etl.config.parsers import DAY, Bounded, Parser, Secret
from etl.errors import ConfigError

if TYPE_CHECKING:
    from etl.api.transport import ReadLimits

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
STRATEGIES = ("auto", "ids", "list")
LOG_FORMATS = ("text", "json")
IF_LOCKED = ("fail", "skip")


@dataclass(frozen=True)
class Key:
    """One config key: where it lives in the YAML, the attribute it sets, how it is read and documented.

    ``section``, ``key`` and ``attr`` come from where it is declared (``Schema.of``); the rest from ``setting``.
    """

    section: str
    key: str
    attr: str
    parser: Parser
    help: str
    default: Any = None
    required: bool = False  # declared without a default: only entries of a list-valued section may be
    aliases: tuple[str, ...] = ()  # older environment variables that still work
    nullable: bool = False  # null in the file, or off/none/null in its variable, sets None (turns it off)
    secret_variable: str | None = None  # for a *_file key: the variable that holds the secret itself

    @property
    def dotted(self) -> str:
        """``section.key``, as error messages and ``config show`` name it."""
        return f"{self.section}.{self.key}"

    @property
    def variable(self) -> str:
        """The environment variable: ``SMARTCAR_ETL_<SECTION>_<KEY>``."""
        return f"SMARTCAR_ETL_{self.section}_{self.key}".upper()

    @property
    def kind(self) -> str:
        """How an environment variable's text is read before the parser checks it: number, whole, bool, text."""
        if isinstance(self.parser, Bounded):
            return self.parser.kind
        return "bool" if self.parser is p.boolean else "text"

    @property
    def is_duration(self) -> bool:
        """Whether its value is written as a duration (``15m``)."""
        return isinstance(self.parser, Bounded) and self.parser.duration

    @property
    def secret_file(self) -> bool:
        """A key naming a file that holds a secret: ``attr`` gets the secret, the ``key`` field the file's name."""
        return self.parser is p.file_secret


@dataclass(frozen=True)
class _Declared:
    """What ``setting`` records in a field's metadata, until ``Schema.of`` knows the section."""

    parser: Parser
    help: str
    key: str | None
    section: str | None
    options: Mapping[str, Any]


def setting(default: Any = dataclasses.MISSING, *, parser: Parser, help: str,
            key: str | None = None, section: str | None = None, **options: Any) -> Any:
    """A dataclass field that is a config key: its default, parser (type, range), help and, if they differ from
    the field's, its YAML name and section. ``options``: ``aliases``, ``nullable``, ``secret_variable``."""
    declared = _Declared(parser, help, key, section, options)
    return field(default=default, metadata={"key": declared})


def section(cls: type) -> Any:
    """A field holding a section (a dataclass of settings), by default all its defaults."""
    return field(default_factory=cls, metadata={"section": cls})


def entries(cls: type) -> Any:
    """A field holding a list-valued section: a tuple of ``cls``, each entry declared by ``cls``'s settings."""
    return field(default=(), metadata={"entries": cls})


@dataclass(frozen=True)
class Section:
    """One section of the YAML: its keys, the dataclass they build, and whether it is a list of entries."""

    name: str
    keys: tuple[Key, ...]
    cls: type | None = None  # None: the keys are fields of the root itself (database.url)
    many: bool = False

    def key(self, name: Any) -> Key | None:
        """The key named ``name`` in the file, if there is one."""
        return next((key for key in self.keys if key.key == name), None)


def _keys_of(cls: type, section_name: str | None) -> list[Key]:
    keys = []
    for f in dataclasses.fields(cls):
        declared = f.metadata.get("key")
        if declared is None:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        keys.append(Key(declared.section or section_name or "", declared.key or f.name, f.name, declared.parser,
                        declared.help, default=default, required=f.default is dataclasses.MISSING,
                        **declared.options))
    return keys


@dataclass(frozen=True)
class Schema:
    """The sections of a root dataclass, in declaration order, and the keys of all its sections."""

    root: type
    sections: tuple[Section, ...]

    @classmethod
    def of(cls, root: type) -> Schema:
        """Derive the schema from ``root``'s fields: settings, ``section(...)`` and ``entries(...)``."""
        own = {key.attr: key for key in _keys_of(root, None)}  # keys on the root itself, in a section of their own
        sections: dict[str, Section] = {}
        for f in dataclasses.fields(root):
            if f.name in own:
                key = own[f.name]
                before = sections.get(key.section, Section(key.section, ()))
                sections[key.section] = dataclasses.replace(before, keys=(*before.keys, key))
            elif "section" in f.metadata or "entries" in f.metadata:
                inner = f.metadata.get("section") or f.metadata["entries"]
                sections[f.name] = Section(f.name, tuple(_keys_of(inner, f.name)), inner, "entries" in f.metadata)
        return cls(root, tuple(sections.values()))

    @property
    def keys(self) -> tuple[Key, ...]:
        """Every key of the single-valued sections (those set by environment variables), in order."""
        return tuple(key for s in self.sections if not s.many for key in s.keys)

    def section(self, name: Any) -> Section | None:
        """The section named ``name`` in the file, if there is one."""
        return next((s for s in self.sections if s.name == name), None)

    def key(self, dotted: str) -> Key | None:
        """The key ``section.key`` of a single-valued section, if there is one."""
        name, _, key = dotted.partition(".")
        found = self.section(name)
        return found.key(key) if found is not None and not found.many else None


@dataclass(frozen=True)
class ApiConfig:
    """Where the Smartcar API is and how to authenticate against it."""

    base_url: str = setting("https://vehicle.api.smartcar.com/v3", parser=p.api_url,
                            help="Vehicle API v3 base; `http://` only for loopback", aliases=("SMARTCAR_API_BASE_URL",))
    token_url: str = setting("https://iam.smartcar.com/oauth2/token", parser=p.api_url,
                             help="client-credentials token endpoint; `http://` only for loopback",
                             aliases=("SMARTCAR_TOKEN_URL",))
    client_id: str | None = setting(None, parser=p.string, help="application client id (goes with a client secret)",
                                    aliases=("SMARTCAR_CLIENT_ID",))
    client_secret: Secret | None = setting(
        None, parser=p.file_secret, key="client_secret_file", secret_variable="SMARTCAR_CLIENT_SECRET",
        help="a file holding the client secret (else `SMARTCAR_CLIENT_SECRET`)")
    access_token: Secret | None = setting(
        None, parser=p.file_secret, key="access_token_file", secret_variable="SMARTCAR_ACCESS_TOKEN",
        help="a file holding a ready bearer token, used without client credentials (else `SMARTCAR_ACCESS_TOKEN`)")
    client_secret_file: str | None = None  # where client_secret was read from, if from a file
    access_token_file: str | None = None
    application: str = setting("default", parser=p.application_name,
                               help="the application's name without an `applications` list: lower-case letters, "
                               "digits and hyphens, at most 40")
    timeout_seconds: float = setting(310.0, parser=p.number(0.1, 3600),
                                     help="seconds to wait for bytes of an answer, 0.1-3600")
    concurrency: int = setting(8, parser=p.number(1, 256, whole=True), help="requests in flight at most, 1-256")
    request_deadline_seconds: float = setting(
        330.0, parser=p.duration(1, 6 * 3600), key="request_deadline",
        help="the whole of one request, 1s-6h, at least `api.timeout_seconds`")
    retry_deadline_seconds: float = setting(
        1800.0, parser=p.duration(1, DAY), key="retry_deadline",
        help="one request with all its retries, 1s-1d, at least `api.request_deadline`")
    max_response_bytes: int = setting(8 * 1024 * 1024, parser=p.number(1024, 1024**3, whole=True),
                                      help="largest answer read, decoded, 1024 bytes to 1 GiB")

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

    def problems(self, where: str) -> list[str]:
        """What the keys' own parsers cannot see: credentials that go together, deadlines in order."""
        found = []
        if bool(self.client_id) != bool(self.client_secret):
            found.append(f"{where}: client_id and client_secret go together (SMARTCAR_CLIENT_ID, "
                         f"SMARTCAR_CLIENT_SECRET or {where}.client_secret_file)")
        if self.request_deadline_seconds < self.timeout_seconds:
            found.append(f"{where}.request_deadline: must be at least {where}.timeout_seconds")
        if self.retry_deadline_seconds < self.request_deadline_seconds:
            found.append(f"{where}.retry_deadline: must be at least {where}.request_deadline")
        return found


@dataclass(frozen=True)
class RetryConfig:
    """How failed requests are retried."""

    max_attempts: int = setting(5, parser=p.number(1, 100, whole=True),
                                help="attempts per request for 429, 5xx, timeouts and network errors, 1-100")
    initial_backoff_seconds: float = setting(
        0.5, parser=p.number(0, 3600), help="first backoff, 0-3600 seconds, doubling up to `retry.max_backoff_seconds`")
    max_backoff_seconds: float = setting(60.0, parser=p.number(0, DAY), help="longest backoff, 0-86400 seconds")
    max_retry_after_seconds: float = setting(300.0, parser=p.number(0, DAY),
                                             help="a `Retry-After` is honoured up to this, 0-86400 seconds")

    def problems(self, where: str) -> list[str]:
        """The backoff starts no longer than it may grow."""
        if self.initial_backoff_seconds > self.max_backoff_seconds:
            return [f"{where}.initial_backoff_seconds: must not exceed {where}.max_backoff_seconds"]
        return []


@dataclass(frozen=True)
class RateLimitConfig:
    """The client-side token bucket; Smartcar's documented default is 120 requests, refilled at 2 a minute."""

    capacity: int = setting(120, parser=p.number(1, 10_000_000, whole=True),
                            help="the application's request bucket, 1-10,000,000")
    per_minute: float = setting(2.0, parser=p.number(0.001, 10_000_000), help="its refill a minute, 0.001-10,000,000")
    key: str | None = setting(None, parser=p.short_string,
                              help="the bucket's name in the database (default: the application's name), "
                              "at most 200 characters")


@dataclass(frozen=True)
class ApplicationConfig:
    """One Smartcar application of an ``applications`` list: its name, credentials, bucket and (optionally) URLs.

    What an entry leaves out comes from ``api.*`` (URLs) and the built-in defaults (its bucket: Smartcar's 120
    requests refilled at 2 a minute); its credentials and bucket are its own.
    """

    name: str = setting(parser=p.application_name,
                        help="lower-case letters, digits and hyphens, at most 40; unique")
    client_id: str | None = setting(None, parser=p.string, help="the application's client id; unique")
    client_secret: Secret | None = setting(None, parser=p.file_secret, key="client_secret_file",
                                           help="a file holding its client secret")
    client_secret_file: str | None = None
    client_secret_variable: str | None = setting(
        None, parser=p.variable_name, help="or the name of an environment variable holding its client secret")
    access_token: Secret | None = setting(None, parser=p.file_secret, key="access_token_file",
                                          help="a file holding a ready bearer token (without client credentials)")
    access_token_file: str | None = None
    base_url: str | None = setting(None, parser=p.api_url, help="its Vehicle API base (default: `api.base_url`)")
    token_url: str | None = setting(None, parser=p.api_url, help="its token endpoint (default: `api.token_url`)")
    capacity: int = setting(120, parser=p.number(1, 10_000_000, whole=True), key="rate_limit.capacity",
                            help="its request bucket, 1-10,000,000")
    per_minute: float = setting(2.0, parser=p.number(0.001, 10_000_000), key="rate_limit.per_minute",
                                help="its bucket's refill a minute, 0.001-10,000,000")
    interval_seconds: float | None = setting(None, parser=p.duration(1, 30 * DAY), key="schedule.interval",
                                             help="its own `schedule.interval`, 1s-30d (default: the global one)")
    cron: str | None = setting(None, parser=p.cron, key="schedule.cron",
                               help="daemon: its own `schedule.cron` (default: the global schedule)")

    def problems(self, where: str) -> list[str]:
        """Credentials: a client id with its secret, or a ready token; a secret from one place."""
        found = []
        if self.client_secret_file and self.client_secret_variable:
            found.append(f"{where}: client_secret_file and client_secret_variable exclude each other")
        if bool(self.client_id) != bool(self.client_secret):
            found.append(f"{where}: client_id and its client secret (client_secret_file or "
                         f"client_secret_variable) go together")
        if not self.client_id and not self.access_token:
            found.append(f"{where}: no credentials: client_id with client_secret_file or client_secret_variable, "
                         f"or access_token_file")
        return found


@dataclass(frozen=True)
class SyncConfig:
    """How a pass lists, fetches and stores."""

    batch_size: int = setting(500, parser=p.number(1, 10_000, whole=True),
                              help="connections written per transaction, 1-10,000")
    strategy: str = setting("auto", parser=p.choice(STRATEGIES),
                            help="`ids`, `list` or `auto` (whichever needs fewer requests)")
    page_size: int = setting(100, parser=p.number(1, 100, whole=True), help="listing page size, 1-100")
    track_listed: bool = setting(False, parser=p.boolean,
                                 help="`true`: a sync that lists also tracks connections it has not seen before")
    max_duration_seconds: float | None = setting(  # None: the schedule's period (or the time to the next firing)
        None, parser=p.duration(1, 30 * DAY), key="max_duration",
        help="start no request that cannot finish within this, 1s-30d (default: the schedule's period)")
    if_locked: str = setting("fail", parser=p.choice(IF_LOCKED),
                             help="when another run holds the lock: `fail` (exit 4) or `skip` (exit 0)")
    max_deleted_share: float = setting(
        0.5, parser=p.number(0, 1), help="a pass that would mark more than this share of the connections it had an "
        "answer for deleted marks none, 0-1")
    outage_after: int = setting(
        10, parser=p.number(1, 1_000_000, whole=True), help="a pass stops asking after this many connections in a "
        "row failed with server or network errors, 1-1,000,000")
    flush_seconds: float = setting(
        10.0, parser=p.number(0.1, 3600),
        help="an answer is stored within this many seconds, even in a batch not yet full, 0.1-3600")
    progress_interval_seconds: float = setting(
        30.0, parser=p.duration(1, DAY), key="progress_interval", help="a pass logs how it is doing this often: "
        "sent, stored, failed, left, the budget, the expected end, 1s-1d")
    stop_timeout_seconds: float = setting(
        10.0, parser=p.duration(0.1, 3600), key="stop_timeout",
        help="sync and backfill: after SIGTERM or SIGINT, how long requests in flight may take, 0.1s-1h")


@dataclass(frozen=True)
class ScheduleConfig:
    """When passes run (daemon) and when each connection is due again (daemon and sync)."""

    interval_seconds: float = setting(900.0, parser=p.duration(1, 30 * DAY), key="interval",
                                      help="how often each connection is fetched (and the daemon runs a pass), 1s-30d")
    cron: str | None = setting(None, parser=p.cron, help="daemon: a crontab expression (UTC) instead of the interval")
    misfire_grace_seconds: int = setting(  # APScheduler takes whole seconds here
        300, parser=p.duration(1, DAY, whole=True), key="misfire_grace",
        help="daemon: a pass missed by at most this still runs, 1s-1d, whole seconds")
    retry_failed_after_seconds: float = setting(300.0, parser=p.duration(1, 30 * DAY), key="retry_failed_after",
                                                help="a failing connection waits this long, doubling each time, 1s-30d")
    retry_failed_max_seconds: float = setting(6 * 3600.0, parser=p.duration(1, 365 * DAY), key="retry_failed_max",
                                              help="...up to this, 1s-365d")
    recheck_deleted_seconds: float = setting(86400.0, parser=p.duration(1, 365 * DAY), key="recheck_deleted_every",
                                             help="a deleted connection is re-checked this often, 1s-365d")

    def problems(self, where: str) -> list[str]:
        """The first wait of a failing connection is no longer than its longest."""
        if self.retry_failed_after_seconds > self.retry_failed_max_seconds:
            return [f"{where}.retry_failed_after: must not exceed {where}.retry_failed_max"]
        return []


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon stops and where it serves metrics."""

    stop_timeout_seconds: float = setting(30.0, parser=p.duration(0.1, 3600), key="stop_timeout",
                                          help="after SIGTERM, how long requests in flight may take, 0.1s-1h")
    metrics_listen: str | None = setting("127.0.0.1:9464", parser=p.listen, nullable=True,
                                         help="Prometheus `/metrics` at host:port; `off` (null in YAML) turns it off")


@dataclass(frozen=True)
class MetricsConfig:
    """Where one-shot runs write Prometheus metrics (node_exporter's textfile collector)."""

    textfile: str | None = setting(None, parser=p.string, help="one-shot runs write Prometheus metrics to this file")


@dataclass(frozen=True)
class ArchiveConfig:
    """Whether every document the API sends is archived (``archive show``, ``rebuild``)."""

    enabled: bool = setting(True, parser=p.boolean, help="keep every document the API sends")


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format (stderr)."""

    level: str = setting("INFO", parser=p.choice(LOG_LEVELS, upper=True), help="`DEBUG`, `INFO`, `WARNING` or `ERROR`")
    format: str = setting("text", parser=p.choice(LOG_FORMATS), help="`text` or `json` (JSON lines), on stderr")


@dataclass(frozen=True)
class Config:
    """The whole configuration of smartcar-etl; its fields, in order, are the sections of config.example.yaml."""

    database_url: str = setting(
        "sqlite:///smartcar_etl.db", parser=p.database_url, section="database", key="url",
        help="SQLAlchemy URL: `sqlite:///PATH`, `postgresql+psycopg://…` (plain `postgresql://` is read with "
        "psycopg 3), `mariadb://…` or `mysql://…` (read with PyMySQL; MariaDB 10.5 or newer)")
    api: ApiConfig = section(ApiConfig)
    retry: RetryConfig = section(RetryConfig)
    rate_limit: RateLimitConfig = section(RateLimitConfig)
    sync: SyncConfig = section(SyncConfig)
    schedule: ScheduleConfig = section(ScheduleConfig)
    daemon: DaemonConfig = section(DaemonConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    archive: ArchiveConfig = section(ArchiveConfig)
    logging: LoggingConfig = section(LoggingConfig)
    applications: tuple[ApplicationConfig, ...] = entries(ApplicationConfig)
    source: str = "built-in defaults"
    # dotted key -> (default | file | environment | option, the variable or option's name); absent: default
    sources: Mapping[str, tuple[str, str | None]] = field(default_factory=dict, compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)  # not errors: each command logs them


    def problems(self, sources: Mapping[str, tuple[str, str | None]]) -> list[str]:
        """An ``applications`` list with the single application's settings beside it; names or client ids twice."""
        if not self.applications:
            return []
        found = [f"applications and {where or dotted} are both set: with an applications list, each entry has "
                 f"its own credentials, bucket and name; move {dotted} into an entry"
                 for dotted in PER_APPLICATION if (where := sources.get(dotted, (None, None))[1]) is not None]
        for what in ("name", "client_id"):
            values = [getattr(e, what) for e in self.applications if getattr(e, what)]
            found += [f"applications: {what} {value!r} is given to more than one application"
                      for value in sorted({v for v in values if values.count(v) > 1})]
        return found

    def application_names(self) -> list[str]:
        """The configured applications' names, in the order of the list (without one: ``api.application``)."""
        return [entry.name for entry in self.applications] or [self.api.application]

    def for_application(self, name: str) -> Config:
        """This configuration as one application sees it: ``api.*`` and ``rate_limit.*`` from its entry.

        KeyError for a name that is not configured."""
        if not self.applications:
            if name != self.api.application:
                raise KeyError(name)
            return self
        entry = next((e for e in self.applications if e.name == name), None)
        if entry is None:
            raise KeyError(name)
        api = dataclasses.replace(
            self.api, application=entry.name, client_id=entry.client_id, client_secret=entry.client_secret,
            client_secret_file=entry.client_secret_file, access_token=entry.access_token,
            access_token_file=entry.access_token_file, base_url=entry.base_url or self.api.base_url,
            token_url=entry.token_url or self.api.token_url)
        rate_limit = RateLimitConfig(capacity=entry.capacity, per_minute=entry.per_minute)
        schedule = self.schedule
        if entry.cron or entry.interval_seconds:
            schedule = dataclasses.replace(schedule, cron=entry.cron, interval_seconds=entry.interval_seconds
                                           or schedule.interval_seconds)
        return dataclasses.replace(self, api=api, rate_limit=rate_limit, schedule=schedule, applications=())


# The single application's settings: with an ``applications`` list each entry has its own, so these are refused.
PER_APPLICATION = ("api.application", "api.client_id", "api.client_secret", "api.access_token",
                   "rate_limit.capacity", "rate_limit.per_minute", "rate_limit.key")
SCHEMA = Schema.of(Config)
# Every key, in the order of config.example.yaml (a test holds them equal). Every number and duration has a
# range, in its parser, its help, config.example.yaml and the table in docs/configuration.md (generated from this list).
KEYS: tuple[Key, ...] = SCHEMA.keys
# Secrets themselves come only from these variables (or from the files the *_file keys name).
SECRET_VARIABLES = {key.secret_variable: key.attr for key in KEYS if key.secret_variable}


def parse_setting(dotted: str, value: Any, *, where: str) -> Any:
    """One setting (``schedule.interval``) checked as the config file's would be; ConfigError names ``where``."""
    key = SCHEMA.key(dotted)
    if key is None:
        msg = f"{dotted}: not a configuration key"
        raise ValueError(msg)
    errors: list[str] = []
    parsed = key.parser(where, value, errors)
    if errors:
        raise ConfigError(errors)
    return parsed
