"""Showing the configuration (etl.config.showing): ``config show`` with each value's source, every key set by its
variable, durations as people write them, the table of variables in docs/configuration.md and config.example.yaml."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from etl.cli import cli
from etl.config import KEYS, variables_table
from etl.config import parsers as p
from etl.config.schema import Key

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def invoke(*args: str, **env: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"SMARTCAR_ETL_CONFIG": "", **env})


def one_object(stdout: str) -> dict[str, Any]:
    """stdout must be exactly one JSON object (json.loads refuses anything after it)."""
    value = json.loads(stdout)
    assert isinstance(value, dict)
    return value


def env_values(tmp_path: Path) -> dict[str, tuple[str, Any]]:
    """For every key: a valid text for its variable (none of them the default) and the value config show prints."""
    secret, token = tmp_path / "client-secret", tmp_path / "access-token"
    secret.write_text("s3cret-from-a-file\n")
    token.write_text("token-from-a-file\n")
    return {
        "database.url": (f"sqlite:///{tmp_path}/env.db", f"sqlite:///{tmp_path}/env.db"),
        "api.base_url": ("http://127.0.0.1:9/v3", "http://127.0.0.1:9/v3"),
        "api.token_url": ("http://127.0.0.1:9/oauth2/token", "http://127.0.0.1:9/oauth2/token"),
        "api.client_id": ("client-from-env", "client-from-env"),
        "api.client_secret_file": (str(secret), str(secret)),
        "api.access_token_file": (str(token), str(token)),
        "api.timeout_seconds": ("12.5", 12.5),
        "api.concurrency": ("3", 3),
        "api.request_deadline": ("1m", 60.0),
        "api.retry_deadline": ("2h", 7200.0),
        "api.max_response_bytes": ("2048", 2048),
        "retry.max_attempts": ("7", 7),
        "retry.initial_backoff_seconds": ("0.25", 0.25),
        "retry.max_backoff_seconds": ("30", 30.0),
        "retry.max_retry_after_seconds": ("90", 90.0),
        "rate_limit.capacity": ("600", 600),
        "rate_limit.per_minute": ("10", 10.0),
        "rate_limit.key": ("shared-bucket", "shared-bucket"),
        "api.application": ("eu-west", "eu-west"),
        "sync.batch_size": ("50", 50),
        "sync.strategy": ("list", "list"),
        "sync.page_size": ("25", 25),
        "sync.track_listed": ("yes", True),
        "sync.max_duration": ("10m", 600.0),
        "sync.if_locked": ("skip", "skip"),
        "sync.max_deleted_share": ("0.25", 0.25),
        "sync.outage_after": ("3", 3),
        "sync.flush_seconds": ("2.5", 2.5),
        "sync.progress_interval": ("5s", 5.0),
        "sync.stop_timeout": ("20s", 20.0),
        "schedule.interval": ("1h", 3600.0),
        "schedule.cron": ("*/5 * * * *", "*/5 * * * *"),
        "schedule.misfire_grace": ("2m", 120),
        "schedule.retry_failed_after": ("1m", 60.0),
        "schedule.retry_failed_max": ("2h", 7200.0),
        "schedule.recheck_deleted_every": ("12h", 43200.0),
        "daemon.stop_timeout": ("45s", 45.0),
        "daemon.metrics_listen": ("127.0.0.1:9999", "127.0.0.1:9999"),
        "metrics.textfile": ("/var/lib/node_exporter/etl.prom", "/var/lib/node_exporter/etl.prom"),
        "archive.enabled": ("false", False),
        "logging.level": ("warning", "WARNING"),
        "logging.format": ("json", "json"),
    }


def made_up_value(key: Key) -> tuple[str, Any] | None:
    """A valid value other than the default, for a key declared as a number, a duration or a boolean (so that a
    new key of those kinds needs nothing here); None for other kinds."""
    if key.parser is p.boolean:
        return ("false", False) if key.default else ("true", True)
    if not isinstance(key.parser, p.Bounded):
        return None
    bounds = key.parser
    value = bounds.high if bounds.high != key.default else bounds.low
    value = int(value) if bounds.whole else float(value)
    return str(value), value


def test_every_config_key_set_by_its_variable_reads_back_through_config_show(tmp_path: Path) -> None:
    made_up = {key.dotted: made_up_value(key) for key in KEYS}
    values = {**{k: v for k, v in made_up.items() if v is not None}, **env_values(tmp_path)}
    assert set(values) == {key.dotted for key in KEYS}, "a key of a new kind was added: give it a value here"
    env = {key.variable: values[key.dotted][0] for key in KEYS}
    result = CliRunner().invoke(cli, ["config", "show", "--format", "json"], env={**env, "SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 0, result.output
    settings = one_object(result.stdout)["settings"]
    for key in KEYS:
        assert settings[key.dotted] == {"value": values[key.dotted][1], "source": "environment",
                                        "origin": key.variable}, key.dotted
    for secret, variable in (("api.client_secret", "SMARTCAR_ETL_API_CLIENT_SECRET_FILE"),
                             ("api.access_token", "SMARTCAR_ETL_API_ACCESS_TOKEN_FILE")):
        assert settings[secret] == {"value": "set", "source": "environment", "origin": variable}
    assert "s3cret-from-a-file" not in result.output and "token-from-a-file" not in result.output


def test_the_made_up_values_of_numbers_durations_and_booleans_read_back_through_config_show() -> None:
    made_up = {key: value for key in KEYS if (value := made_up_value(key)) is not None}
    assert len(made_up) >= 25  # every number, duration and boolean key of today
    env = {key.variable: text for key, (text, _) in made_up.items()}
    result = CliRunner().invoke(cli, ["config", "show", "--format", "json"], env={**env, "SMARTCAR_ETL_CONFIG": ""})
    assert result.exit_code == 0, result.output
    settings = one_object(result.stdout)["settings"]
    for key, (_, value) in made_up.items():
        assert settings[key.dotted] == {"value": value, "source": "environment", "origin": key.variable}, key.dotted
        assert value != key.default, key.dotted


def test_config_show_names_each_source_and_precedence_is_option_environment_file_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("api:\n  concurrency: 5\nsync:\n  batch_size: 70\nlogging:\n  level: ERROR\n")
    env = {"SMARTCAR_ETL_CONFIG": "", "SMARTCAR_ETL_SYNC_BATCH_SIZE": "80", "SMARTCAR_ETL_LOGGING_LEVEL": "INFO",
           "SMARTCAR_CLIENT_SECRET": "do-not-print-me", "SMARTCAR_CLIENT_ID": "cid",
           "SMARTCAR_ETL_DATABASE_URL": "postgresql+psycopg://etl:hunter2pw@db.example/etl"}
    result = CliRunner().invoke(cli, ["--log-level", "DEBUG", "config", "show", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    shown = one_object(result.stdout)
    settings = shown["settings"]
    assert shown["config_file"] == "config.yaml"
    assert settings["api.concurrency"] == {"value": 5, "source": "file", "origin": "config.yaml"}
    assert settings["sync.batch_size"] == {"value": 80, "source": "environment",
                                           "origin": "SMARTCAR_ETL_SYNC_BATCH_SIZE"}
    assert settings["logging.level"] == {"value": "DEBUG", "source": "option", "origin": "--log-level"}
    assert settings["api.timeout_seconds"] == {"value": 310.0, "source": "default", "origin": None}
    assert settings["api.client_secret"] == {"value": "set", "source": "environment",
                                             "origin": "SMARTCAR_CLIENT_SECRET"}
    assert settings["api.access_token"]["value"] == "unset"
    assert settings["database.url"]["value"] == "postgresql+psycopg://etl:***@db.example/etl"
    table = CliRunner().invoke(cli, ["config", "show"], env=env)
    assert table.exit_code == 0 and re.search(r"api\.concurrency\s+5\s+file\s+config\.yaml", table.stdout)
    for output in (result.output, table.output):
        assert "do-not-print-me" not in output and "hunter2pw" not in output


@pytest.mark.parametrize(("env", "message"), [
    ({"SMARTCAR_ETL_API_CONCURRENCY": "lots"}, "SMARTCAR_ETL_API_CONCURRENCY: expected a whole number"),
    ({"SMARTCAR_ETL_API_CONCURRENCY": "1e3"}, "SMARTCAR_ETL_API_CONCURRENCY: expected a whole number"),
    ({"SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE": "nan"}, "SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE: expected a number"),
    ({"SMARTCAR_ETL_ARCHIVE_ENABLED": "maybe"}, "SMARTCAR_ETL_ARCHIVE_ENABLED: expected true or false"),
    ({"SMARTCAR_ETL_SCHEDULE_INTERVAL": "forever"}, "SMARTCAR_ETL_SCHEDULE_INTERVAL: expected a duration"),
    ({"SMARTCAR_ETL_SYNC_IF_LOCKED": "wait"}, "SMARTCAR_ETL_SYNC_IF_LOCKED: expected one of fail, skip"),
    ({"SMARTCAR_ETL_API_BASE_URL": "http://127.0.0.1:1/v3", "SMARTCAR_API_BASE_URL": "http://127.0.0.1:2/v3"},
     "SMARTCAR_ETL_API_BASE_URL and SMARTCAR_API_BASE_URL are both set and differ"),
    ({"SMARTCAR_ETL_API_CLIENT_SECRET": "pasted-secret-value"}, "SMARTCAR_ETL_API_CLIENT_SECRET: secrets are read "
     "from SMARTCAR_CLIENT_SECRET or SMARTCAR_ETL_API_CLIENT_SECRET_FILE, not from this variable"),
    ({"SMARTCAR_ETL_API_ACCESS_TOKEN": "pasted-secret-value"}, "SMARTCAR_ETL_API_ACCESS_TOKEN: secrets are read "
     "from SMARTCAR_ACCESS_TOKEN or SMARTCAR_ETL_API_ACCESS_TOKEN_FILE, not from this variable"),
    ({"SMARTCAR_CLIENT_SECRET": "changeme"}, "SMARTCAR_CLIENT_SECRET: looks like a placeholder"),
    ({"SMARTCAR_ETL_API_CONCURRENCY": "9" * 5000}, "SMARTCAR_ETL_API_CONCURRENCY: expected a whole number from 1 "
     "to 256, got '99999"),
    ({"SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE": "1" * 400 + ".5"}, "SMARTCAR_ETL_RATE_LIMIT_PER_MINUTE: expected a "
     "number"),
    ({"SMARTCAR_ETL_SYNC_STRATEGY": "ids\x1b[31m"}, "SMARTCAR_ETL_SYNC_STRATEGY: expected one of auto, ids, list, "
     "got 'ids\\x1b[31m'"),
    ({"SMARTCAR_ETL_LOGGING_LEVEL": "x" * 100_000}, "SMARTCAR_ETL_LOGGING_LEVEL: expected one of"),
])
def test_a_bad_variable_is_exit_2_naming_it(env: dict[str, str], message: str) -> None:
    result = CliRunner().invoke(cli, ["config", "show"], env={"SMARTCAR_ETL_CONFIG": "", **env})
    assert result.exit_code == 2 and message in result.stderr
    assert "pasted-secret-value" not in result.output


def test_an_old_and_a_new_name_with_the_same_value_agree_and_metrics_listen_can_be_turned_off() -> None:
    env = {"SMARTCAR_ETL_CONFIG": "", "SMARTCAR_CLIENT_ID": "same", "SMARTCAR_ETL_API_CLIENT_ID": "same",
           "SMARTCAR_CLIENT_SECRET": "a-real-looking-secret", "SMARTCAR_ETL_DAEMON_METRICS_LISTEN": "off"}
    result = CliRunner().invoke(cli, ["config", "show", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    settings = one_object(result.stdout)["settings"]
    assert settings["api.client_id"] == {"value": "same", "source": "environment",
                                         "origin": "SMARTCAR_ETL_API_CLIENT_ID"}
    assert settings["daemon.metrics_listen"]["value"] is None


def test_the_readme_variable_table_equals_the_schema() -> None:
    block = CONFIGURATION.split("<!-- variables:start -->\n", 1)[1].split("\n<!-- variables:end -->", 1)[0]
    assert block.splitlines() == variables_table(), "run .venv/bin/python scripts/readme_variables.py"
    for key in KEYS:
        assert f"`{key.variable}`" in block


def test_the_example_config_lists_every_key() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    listed = {f"{section}.{name}" for section, body in example.items() for name in body}
    assert listed == {key.dotted for key in KEYS}


def test_config_show_prints_durations_as_people_write_them(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("sync:\n  max_duration: 5400\nschedule:\n  retry_failed_after: 90\n")
    table = invoke("config", "show").stdout
    for key, shown in (("schedule.interval", "15m"), ("schedule.recheck_deleted_every", "1d"),
                       ("schedule.retry_failed_max", "6h"), ("sync.stop_timeout", "10s"),
                       ("sync.max_duration", "90m"), ("schedule.retry_failed_after", "90s"),
                       ("schedule.misfire_grace", "5m"), ("api.concurrency", "8"),
                       ("retry.initial_backoff_seconds", "0.5")):
        assert re.search(rf"^{re.escape(key)}\s+{re.escape(shown)}\s", table, re.MULTILINE), (key, table)
    settings = json.loads(invoke("config", "show", "--format", "json").stdout)["settings"]
    assert settings["schedule.interval"]["value"] == 900.0 and settings["sync.max_duration"]["value"] == 5400.0
