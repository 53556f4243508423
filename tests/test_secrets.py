"""A distinctive client secret and token never appear in output, logs or the database."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from etl.cli import cli
from etl.db.engine import make_engine
from etl.db.models import Base
from etl.fakeapi import FakeApi, serve, urls

SECRET = "sEcReT-7f3a9c41-never-print-me"
READY_TOKEN = "ToKeN-b81e02d5-never-print-me"


def database_text(url: str) -> str:
    """Every value of every table, as text."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return "\n".join(repr(row) for table in Base.metadata.sorted_tables
                             for row in conn.execute(select(table)))
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_secrets_stay_out_of_output_logs_and_database(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakeApi(client_id="cid-123", client_secret=SECRET, access_tokens=(READY_TOKEN,))
    ids = fake.populate(5, seed=9)
    fake.connections[ids[0]].broken = "not_json"
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    with serve(fake) as root:
        u = urls(root)
        env = {"SMARTCAR_ETL_DATABASE_URL": db_url, "SMARTCAR_API_BASE_URL": u["base_url"],
               "SMARTCAR_TOKEN_URL": u["token_url"], "SMARTCAR_ETL_CONFIG": ""}
        credentials = {"SMARTCAR_CLIENT_ID": "cid-123", "SMARTCAR_CLIENT_SECRET": SECRET}
        runs = [
            (["db", "upgrade"], env),
            (["connections", "add", *ids], env),
            (["--log-level", "DEBUG", "--log-format", "json", "sync", "--all"], {**env, **credentials}),
            (["--log-level", "DEBUG", "sync", "--all"], {**env, "SMARTCAR_ACCESS_TOKEN": READY_TOKEN}),
            # failures: a refused secret, a refused ready token, an expired token, a 5xx
            (["--log-level", "DEBUG", "sync", "--all"], {**env, **credentials,
                                                         "SMARTCAR_CLIENT_SECRET": SECRET[::-1]}),
            (["--log-level", "DEBUG", "sync", "--all"], {**env, "SMARTCAR_ACCESS_TOKEN": READY_TOKEN + "x"}),
        ]
        codes = []
        for args, run_env in runs:
            if "sync" in args:
                fake.expire_tokens()
                fake.fail_next(503, match=ids[1])
            result = CliRunner().invoke(cli, args, env=run_env, catch_exceptions=False)
            codes.append(result.exit_code)
            seen += [result.stdout, result.stderr]
    assert codes == [0, 0, 1, 1, 3, 3]
    issued = fake.issued_tokens
    assert issued, "the job fetched at least one token"
    seen += [caplog.text, database_text(db_url)]
    if db_url.startswith("sqlite"):
        seen += [p.read_bytes().decode("latin-1") for p in tmp_path.glob("etl.db*")]
    everything = "\n".join(seen)
    assert "HTTP 401" in everything  # the refusals were reported...
    for secret in [SECRET, SECRET[::-1], READY_TOKEN, READY_TOKEN + "x", *issued]:
        assert secret not in everything  # ...without the secrets
