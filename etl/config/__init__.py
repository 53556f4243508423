"""Typed configuration: a YAML file, then environment variables over it.

Everything is validated when the config is built and every problem is reported
at once, each naming its YAML path (``api.concurrency``) or its environment
variable. Secrets are only read from the environment or from a file the config
names; they are wrapped in ``Secret`` so that no repr, log line or exception
shows them.

- ``schema``: the dataclasses, each key declared once with ``setting(...)``; ``KEYS`` derived from them;
- ``parsers``: how one value is checked (numbers and durations with their range, URLs, secrets);
- ``loading``: defaults, file, environment and options, with each value's source; unknown variables;
- ``showing``: ``config show``'s rows, the table of variables in docs/configuration.md, values as people write them.
"""

from etl.config.loading import DEFAULT_CONFIG_FILE, find_config_file, load_config, unknown_variables
from etl.config.parsers import Secret, is_loopback_host, parse_duration
from etl.config.schema import (
    IF_LOCKED,
    KEYS,
    LOG_FORMATS,
    LOG_LEVELS,
    SCHEMA,
    SECRET_VARIABLES,
    STRATEGIES,
    ApiConfig,
    ArchiveConfig,
    Config,
    DaemonConfig,
    Key,
    LoggingConfig,
    MetricsConfig,
    RateLimitConfig,
    RetryConfig,
    ScheduleConfig,
    Schema,
    Section,
    SyncConfig,
    entries,
    parse_setting,
    section,
    setting,
)
from etl.config.showing import effective_settings, setting_text, variables_table

__all__ = [
    "DEFAULT_CONFIG_FILE", "IF_LOCKED", "KEYS", "LOG_FORMATS", "LOG_LEVELS", "SCHEMA", "SECRET_VARIABLES",
    "STRATEGIES", "ApiConfig", "ArchiveConfig", "Config", "DaemonConfig", "Key", "LoggingConfig", "MetricsConfig",
    "RateLimitConfig", "RetryConfig", "ScheduleConfig", "Schema", "Section", "Secret", "SyncConfig",
    "effective_settings", "entries", "find_config_file", "is_loopback_host", "load_config", "parse_duration",
    "parse_setting", "section", "setting", "setting_text", "unknown_variables", "variables_table",
]
