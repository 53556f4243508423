"""Configuration (etl.config): the schema, its parsers and loading: YAML, environment and options, validated at
once, each error naming its YAML path or variable, secrets kept out of sight. ``config show`` and the README's
table: tests/test_config_showing.py."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from etl.config import (
    KEYS,
    SCHEMA,
    Config,
    Schema,
    Secret,
    entries,
    load_config,
    parse_setting,
    section,
    setting,
    setting_text,
)
from etl.config import parsers as p
from etl.config.loading import build
from etl.errors import ConfigError
from tests.test_hostile_cli import invoke

ROOT = Path(__file__).resolve().parent.parent
SECRET = "a-real-looking-client-secret-42"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.yaml of the developer's, and ./smartcar_etl.db lands here


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


write_config = write




def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config == Config()
    assert config.database_url == "sqlite:///smartcar_etl.db"
    assert config.api.base_url == "https://vehicle.api.smartcar.com/v3"
    assert config.api.token_url == "https://iam.smartcar.com/oauth2/token"
    assert (config.retry.max_attempts, config.api.concurrency) == (5, 8)


def test_example_config_is_valid_and_documents_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.yaml"
    config = load_config(str(example), env={})
    assert config.api == Config().api and config.retry == Config().retry and config.sync == Config().sync
    assert (config.schedule, config.daemon, config.metrics) == (Config().schedule, Config().daemon, Config().metrics)
    assert config.rate_limit == Config().rate_limit
    assert config.database_url == Config().database_url


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "database:\n  url: sqlite:///from-file.db\napi:\n  concurrency: 3\n")
    config = load_config(path, env={
        "SMARTCAR_ETL_DATABASE_URL": "postgresql://etl@db.example/etl",
        "SMARTCAR_API_BASE_URL": "http://127.0.0.1:8765/v3",
        "SMARTCAR_CLIENT_ID": "cid", "SMARTCAR_CLIENT_SECRET": "s3cret-value",
    })
    assert config.database_url == "postgresql+psycopg://etl@db.example/etl"
    assert config.api.base_url == "http://127.0.0.1:8765/v3" and config.api.concurrency == 3
    assert config.api.client_secret == Secret("s3cret-value")


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "sync:\n  batch_size: 7\n")
    assert load_config(env={"SMARTCAR_ETL_CONFIG": path}).sync.batch_size == 7
    with pytest.raises(ConfigError, match="SMARTCAR_ETL_CONFIG: config file /nope.yaml does not exist"):
        load_config(env={"SMARTCAR_ETL_CONFIG": "/nope.yaml"})
    with pytest.raises(ConfigError, match="--config: config file"):
        load_config(str(tmp_path / "missing.yaml"), env={})


def test_every_error_is_reported_at_once_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, """
api:
  concurrency: 0
  base_url: http://smartcar.example.com/v3
  timeout_seconds: fast
  client_secret: hunter2hunter2
retry:
  max_attempts: -1
logging:
  level: LOUD
sync:
  batchsize: 10
colour: blue
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"SMARTCAR_TOKEN_URL": "ftp://x"})
    errors = caught.value.errors
    for expected in ["api.concurrency", "api.base_url: plain http:// is accepted only for loopback",
                     "api.timeout_seconds", "api.client_secret: secrets are not read from the config file",
                     "retry.max_attempts", "logging.level", "sync.batchsize: unknown key",
                     "colour: unknown section", "SMARTCAR_TOKEN_URL: expected an https:// URL"]:
        assert any(expected in e for e in errors), (expected, errors)
    assert len(errors) == 9
    assert "hunter2" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_secret_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("  file-secret-value\n")
    path = write(tmp_path, f"api:\n  client_id: abc\n  client_secret_file: {tmp_path / 'secret'}\n")
    assert load_config(path, env={}).api.client_secret == Secret("file-secret-value")
    path = write(tmp_path, "api:\n  client_id: abc\n  client_secret_file: /does/not/exist\n")
    # The value is not echoed: a secret pasted into a *_file key by mistake must stay out of the output.
    with pytest.raises(ConfigError, match=r"api.client_secret_file \(the file it names\): cannot read it: No such file"
                       ) as caught:
        load_config(path, env={})
    assert "/does/not/exist" not in str(caught.value)


@pytest.mark.parametrize("env, message", [
    ({"SMARTCAR_CLIENT_ID": "abc"}, "client_id and client_secret go together"),
    ({"SMARTCAR_CLIENT_ID": "abc", "SMARTCAR_CLIENT_SECRET": "changethis"}, "placeholder"),
    ({"SMARTCAR_ACCESS_TOKEN": "<your token>"}, "placeholder"),
    ({"SMARTCAR_ETL_DATABASE_URL": "mssql://root@localhost/x"}, "unsupported database 'mssql'"),
    ({"SMARTCAR_ETL_DATABASE_URL": "not a url"}, "not a SQLAlchemy database URL"),
    ({"SMARTCAR_API_BASE_URL": "https://user:pw@api.example.com/v3"}, "must not carry"),
])
def test_bad_environment_values(env: dict[str, str], message: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_secret_never_shows_itself() -> None:
    secret = Secret("distinctive-secret-42")
    assert "distinctive" not in repr(secret) and "distinctive" not in str(secret)
    assert "distinctive" not in repr(Config().api.__class__(client_secret=secret))
    assert secret.get() == "distinctive-secret-42"


def test_malformed_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read YAML"):
        load_config(write(tmp_path, "api: [unclosed\n"), env={})
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), env={})


def test_schedule_durations_and_cron(tmp_path: Path) -> None:
    path = write(tmp_path, "schedule:\n  interval: 90s\n  recheck_deleted_every: 2d\n  cron: '*/5 * * * *'\n"
                           "daemon:\n  metrics_listen: null\n  stop_timeout: 1m\n")
    config = load_config(path, env={})
    assert (config.schedule.interval_seconds, config.schedule.recheck_deleted_seconds) == (90, 172800)
    assert config.schedule.cron == "*/5 * * * *"
    assert config.daemon.metrics_listen is None and config.daemon.stop_timeout_seconds == 60
    bad = write(tmp_path, "schedule:\n  interval: soon\n  cron: 'not cron'\n  retry_failed_after: 7h\n"
                          "daemon:\n  metrics_listen: nowhere\n")
    with pytest.raises(ConfigError) as caught:
        load_config(bad, env={})
    text = str(caught.value)
    for key in ("schedule.interval: expected a duration", "schedule.cron: not a crontab expression",
                "schedule.retry_failed_after: must not exceed", "daemon.metrics_listen: expected host:port"):
        assert key in text


def test_each_problem_of_a_file_is_reported_after_the_one_before(tmp_path: Path) -> None:
    path = write(tmp_path, """
colour: blue
api: 5
sync:
  client_secret: nope
  nope: 1
  batch_size: 0
api_extra:
metrics:
archive:
  enabled: maybe
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.errors == [
        "colour: unknown section (expected one of database, api, retry, rate_limit, sync, schedule, daemon, "
        "metrics, archive, logging, applications)",
        "api: expected a mapping",
        "sync.client_secret: unknown key",
        "sync.nope: unknown key",
        "sync.batch_size: expected a whole number from 1 to 10000, got 0",
        "api_extra: unknown section (expected one of database, api, retry, rate_limit, sync, schedule, daemon, "
        "metrics, archive, logging, applications)",
        "archive.enabled: expected true or false, got 'maybe'",
    ]


# -- numbers, durations, URLs and secret files (moved from test_hostile_cli, test_cli_integrity, test_archive,
# test_operator_inputs) ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, key", [
    ("api:\n  timeout_seconds: .nan\n", "api.timeout_seconds"),
    ("api:\n  timeout_seconds: .inf\n", "api.timeout_seconds"),
    ("api:\n  concurrency: 100000\n", "api.concurrency"),
    ("api:\n  max_response_bytes: 10\n", "api.max_response_bytes"),
    ("api:\n  request_deadline: 100s\n", "api.request_deadline: must be at least api.timeout_seconds"),
    ("api:\n  retry_deadline: 5m\n", "api.retry_deadline: must be at least api.request_deadline"),
    ("schedule:\n  interval: .inf\n", "schedule.interval"),
    ("schedule:\n  interval: 1e300\n", "schedule.interval"),
    ("schedule:\n  interval: inf\n", "schedule.interval"),
    ("schedule:\n  interval: nans\n", "schedule.interval"),
    ("schedule:\n  interval: 1e3s\n", "schedule.interval"),
    ("schedule:\n  retry_failed_max: 1e300\n", "schedule.retry_failed_max"),
    ("schedule:\n  misfire_grace: 0.5s\n", "schedule.misfire_grace"),
    ("retry:\n  max_attempts: 1e300\n", "retry.max_attempts"),
    ("retry:\n  max_backoff_seconds: .inf\n", "retry.max_backoff_seconds"),
    ("rate_limit:\n  per_minute: .nan\n", "rate_limit.per_minute"),
    ("rate_limit:\n  per_minute: 1.0e-9\n", "rate_limit.per_minute"),
    ("sync:\n  batch_size: 1e9\n", "sync.batch_size"),
    ("daemon:\n  stop_timeout: 1e99d\n", "daemon.stop_timeout"),
])
def test_every_number_is_finite_and_within_its_range(tmp_path: Path, yaml_text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, yaml_text), env={})
    assert any(error.startswith(key) for error in caught.value.errors), caught.value.errors
    result = invoke("--config", str(tmp_path / "config.yaml"), "status")
    assert result.exit_code == 2 and key.split(":")[0] in result.stderr


def test_the_edges_of_the_ranges_are_accepted(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, (
        "api:\n  timeout_seconds: 0.1\n  request_deadline: 1s\n  retry_deadline: 1d\n  max_response_bytes: 1024\n"
        "schedule:\n  interval: 30d\n  misfire_grace: 1s\n"
        "rate_limit:\n  per_minute: 0.001\n")), env={})
    assert (config.api.request_deadline_seconds, config.api.retry_deadline_seconds) == (1.0, 86400.0)
    assert config.schedule.misfire_grace_seconds == 1 and isinstance(config.schedule.misfire_grace_seconds, int)
    assert config.rate_limit.per_minute == 0.001 and config.api.max_response_bytes == 1024


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", "0s", "-5m", "31d"])
def test_daemon_interval_is_checked_like_the_config(value: str) -> None:
    result = invoke("daemon", "--interval", value)
    assert result.exit_code == 2 and "--interval" in result.stderr and repr(value) in result.stderr
    with pytest.raises(ConfigError, match="--interval"):
        parse_setting("schedule.interval", value, where="--interval")


def test_a_secret_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name, problem in [("/dev/zero", "is not a regular file"), (str(fifo), "is not a regular file"),
                          (str(tmp_path), "is not a regular file")]:
        path = write_config(tmp_path, f"api:\n  client_id: abc\n  client_secret_file: {name}\n")
        result = invoke("--config", path, "status")
        assert result.exit_code == 2 and "api.client_secret_file" in result.stderr and problem in result.stderr


def test_a_secret_file_too_large_or_not_utf8_is_refused_and_not_echoed(tmp_path: Path) -> None:
    big, latin = tmp_path / "big", tmp_path / "latin"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    latin.write_bytes(b"caf\xe9-secret")
    for file, problem in [(big, "larger than 65536 bytes"), (latin, "is not UTF-8 text")]:
        path = write_config(tmp_path, f"api:\n  client_id: abc\n  client_secret_file: {file}\n")
        result = invoke("--config", path, "status")
        assert result.exit_code == 2 and problem in result.stderr
    # A secret typed into the *_file key by mistake is not echoed back.
    path = write_config(tmp_path, f"api:\n  client_id: abc\n  client_secret_file: {SECRET}\n")
    result = invoke("--config", path, "status")
    assert result.exit_code == 2 and "api.client_secret_file" in result.stderr and SECRET not in result.stderr


def test_a_cron_expression_that_never_fires_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^--cron: '0 0 31 2 \*' never fires$"):
        parse_setting("schedule.cron", "0 0 31 2 *", where="--cron")
    assert parse_setting("schedule.cron", "0 0 29 2 *", where="--cron") == "0 0 29 2 *"  # leap years only


def test_archive_enabled_is_read_from_the_config_and_checked(tmp_path: Any) -> None:
    from etl.config import load_config
    from etl.errors import ConfigError

    assert load_config(env={}).archive.enabled is True
    off = tmp_path / "off.yaml"
    off.write_text("archive:\n  enabled: false\n")
    assert load_config(str(off), env={}).archive.enabled is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("archive:\n  enabled: sometimes\n")
    with pytest.raises(ConfigError, match="archive.enabled"):
        load_config(str(bad), env={})


def test_a_sqlite_url_with_two_slashes_is_exit_2_naming_the_variable_and_the_right_form(tmp_path: Path) -> None:
    result = invoke("status", env={"SMARTCAR_ETL_DATABASE_URL": "sqlite://relative.db"})
    assert result.exit_code == 2, result.output
    assert "SMARTCAR_ETL_DATABASE_URL: sqlite://relative.db names a host" in result.stderr
    assert "sqlite:///relative.db" in result.stderr and "internal error" not in result.stderr
    (tmp_path / "config.yaml").write_text("database:\n  url: sqlite://etl:pw@relative.db\n")
    result = invoke("--config", "config.yaml", "config", "show")
    assert result.exit_code == 2 and "database.url: a SQLite URL has no host" in result.stderr
    assert "pw@" not in result.output


@pytest.mark.parametrize("where", ["file", "SMARTCAR_API_BASE_URL", "SMARTCAR_ETL_API_TOKEN_URL"])
def test_credentials_in_an_api_url_are_refused_and_never_echoed(tmp_path: Path, where: str) -> None:
    for url in ("http://user:s3cretpw@example.com/v3", "ftp://user:s3cretpw@example.com/v3",
                "https://user:s3cretpw@vehicle.api.smartcar.com/v3", "https://vehicle.api.smartcar.com/v3?token=s3cretpw",
                "https://[s3cretpw@::1/v3", "http://s3cretpw@example.com/v3"):
        env = {}
        if where == "file":
            (tmp_path / "config.yaml").write_text(f"api:\n  base_url: {json.dumps(url)}\n")
        else:
            env[where] = url
        result = invoke("config", "show", env=env)
        assert result.exit_code == 2, (url, result.output)
        assert ("api.base_url: " if where == "file" else f"{where}: ") in result.stderr
        assert "s3cretpw" not in result.output and "internal error" not in result.output, url


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_secret_file_open_to_group_or_others_is_warned_about(tmp_path: Path) -> None:
    secret = tmp_path / "client-secret-a1b2"
    secret.write_text("the-real-secret-value\n")
    env = {"SMARTCAR_CLIENT_ID": "cid", "SMARTCAR_ETL_API_CLIENT_SECRET_FILE": str(secret)}
    for mode, warned in ((0o644, True), (0o640, True), (0o600, False), (0o400, False)):
        secret.chmod(mode)
        result = invoke("config", "show", env=env)
        assert result.exit_code == 0, result.output
        assert ("SMARTCAR_ETL_API_CLIENT_SECRET_FILE: the secret's file is open to its group or others "
                f"(mode {mode:04o}); chmod 600 it" in result.stderr) is warned, (mode, result.stderr)
        assert "the-real-secret-value" not in result.output and "a1b2" not in result.stderr
    secret.chmod(0o660)
    doctor = invoke("doctor", "--format", "json", env={
        "SMARTCAR_API_BASE_URL": "http://127.0.0.1:1/v3", "SMARTCAR_TOKEN_URL": "http://127.0.0.1:1/token",
        "SMARTCAR_ETL_RETRY_MAX_ATTEMPTS": "1", **env})
    [configuration] = [c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "configuration"]
    assert configuration["status"] == "warning" and "(mode 0660); chmod 600 it" in configuration["detail"]
    secret.chmod(0o604)
    (tmp_path / "config.yaml").write_text(f"api:\n  client_id: cid\n  client_secret_file: {secret}\n")
    result = invoke("config", "show")
    assert "api.client_secret_file: the secret's file is open to its group or others" in result.stderr


# -- the schema: each key declared once, whole, and documented ----------------------------------------------------

def test_every_key_has_a_variable_a_default_a_range_and_help_and_the_example_documents_it() -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text())
    assert [s.name for s in SCHEMA.sections] == list(example), "sections in the order of config.example.yaml"
    assert [key.dotted for key in KEYS] == [f"{s}.{name}" for s, body in example.items() for name in body]
    assert len({key.variable for key in KEYS}) == len(KEYS)
    for key in KEYS:
        assert key.variable == f"SMARTCAR_ETL_{key.section}_{key.key}".upper(), key.dotted
        assert len(key.help) >= 10 and not key.required, key.dotted
        if key.kind in ("number", "whole") or key.is_duration:
            assert isinstance(key.parser, p.Bounded) and key.parser.low < key.parser.high, key.dotted
            if key.default is not None:
                assert key.parser.low <= key.default <= key.parser.high, key.dotted
        # config.example.yaml holds the key under its section, with its default value
        assert key.key in example[key.section], key.dotted
        written = example[key.section][key.key]
        shown = None if written is None else parse_setting(key.dotted, written, where="config.example.yaml")
        if key.secret_file:
            assert written is None and getattr(Config().api, key.key) is None, key.dotted
        else:
            assert shown == key.default, (key.dotted, written, key.default)
            assert setting_text(key.dotted, shown) == setting_text(key.dotted, key.default)


def test_the_dataclass_defaults_are_the_declared_ones() -> None:
    config = Config()
    for key in KEYS:
        found = SCHEMA.section(key.section)
        holder = config if found is None or found.cls is None else getattr(config, key.section)
        assert getattr(holder, key.attr) == key.default, key.dotted


# -- a list-valued section, declared by the same settings ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Application:
    """An entry of a list-valued section, as a later ``applications:`` would declare it."""

    name: str = setting(parser=p.short_string, help="the application's name, to tell them apart")
    client_id: str | None = setting(None, parser=p.string, help="its client id")
    concurrency: int = setting(8, parser=p.number(1, 256, whole=True), help="requests in flight at most, 1-256")

    def problems(self, where: str) -> list[str]:
        return [f"{where}.client_id: must differ from {where}.name"] if self.client_id == self.name else []


@dataclasses.dataclass(frozen=True)
class Root:
    database_url: str = setting("sqlite:///x.db", parser=p.database_url, section="database", key="url",
                                help="SQLAlchemy URL")
    logging: Any = section(type(Config().logging))
    applications: tuple[Application, ...] = entries(Application)


def test_a_list_valued_section_parses_each_entry_by_the_same_declarations() -> None:
    schema = Schema.of(Root)
    assert [(s.name, s.many) for s in schema.sections] == [("database", False), ("logging", False),
                                                           ("applications", True)]
    # Entries are reached by name, not index: SMARTCAR_ETL_APPLICATIONS_<NAME>_<KEY>; not among the plain keys.
    assert [key.dotted for key in schema.keys] == ["database.url", "logging.level", "logging.format"]
    raw = {"applications": [{"name": "fleet-a"}, {"name": "fleet-b", "client_id": "cid-b", "concurrency": 2}],
           "logging": {"level": "debug"}}
    root, loading = build(schema, raw=raw, env={"SMARTCAR_ETL_APPLICATIONS_FLEET_B_CONCURRENCY": "3",
                                                 "SMARTCAR_ETL_APPLICATIONS_FLEET_C_CLIENT_ID": "cid-c",
                                                 "SMARTCAR_ETL_DATABASE_URL": "sqlite:///env.db"})
    assert root.applications == (Application("fleet-a"), Application("fleet-b", "cid-b", 3),
                                 Application("fleet-c", "cid-c"))
    assert loading.sources["applications[1].concurrency"] == (
        "environment", "SMARTCAR_ETL_APPLICATIONS_FLEET_B_CONCURRENCY")
    root, loading = build(schema, raw=raw, env={"SMARTCAR_ETL_DATABASE_URL": "sqlite:///env.db",
                                                 "logging_level": "ignored"})
    assert root.applications == (Application("fleet-a"), Application("fleet-b", "cid-b", 2))
    assert (root.database_url, root.logging.level) == ("sqlite:///env.db", "DEBUG")
    assert loading.sources["applications[1].concurrency"] == ("file", "applications[1].concurrency")
    assert loading.sources["database.url"] == ("environment", "SMARTCAR_ETL_DATABASE_URL")
    assert "applications[0].concurrency" not in loading.sources  # the default
    empty, _ = build(schema, raw=None, env={})
    assert empty.applications == ()


def test_a_list_valued_section_reports_every_error_with_its_index() -> None:
    schema = Schema.of(Root)
    raw = {"applications": [{"name": "same", "client_id": "same"}, {"name": "", "concurrency": 0},
                            {"colour": "blue"}, 5, None, {"name": "ok", "client_secret": "x"}]}
    with pytest.raises(ConfigError) as caught:
        build(schema, raw=raw, env={})
    assert caught.value.errors == [
        "applications[1].name: expected a non-empty string of printable characters, got ''",
        "applications[1].concurrency: expected a whole number from 1 to 256, got 0",
        "applications[2].colour: unknown key",
        "applications[2].name: required",
        "applications[3]: expected a mapping",
        "applications[4]: expected a mapping",
        "applications[5].client_secret: unknown key",
        "applications[0].client_id: must differ from applications[0].name",
    ]
    with pytest.raises(ConfigError) as caught:
        build(schema, raw={"applications": {"name": "not a list"}}, env={})
    assert caught.value.errors == ["applications: expected a list of entries"]
