"""Configuration: YAML plus environment, validated at once, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from etl.config import Config, Secret, load_config
from etl.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


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
        "metrics, archive, logging)",
        "api: expected a mapping",
        "sync.client_secret: unknown key",
        "sync.nope: unknown key",
        "sync.batch_size: expected a whole number from 1 to 10000, got 0",
        "api_extra: unknown section (expected one of database, api, retry, rate_limit, sync, schedule, daemon, "
        "metrics, archive, logging)",
        "archive.enabled: expected true or false, got 'maybe'",
    ]
