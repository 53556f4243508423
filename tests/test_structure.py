"""The shape of the code base, held by tests: small signatures, SQL in one layer, migrations that ship.

- no module in ``etl/`` is longer than 500 lines, and no function or method than 60;
- no function or method in ``etl/`` takes more than six parameters (``self``/``cls``
  aside; the bundled fake API and the click callbacks, whose options are their
  parameters, are exempt);
- only ``etl/db/``, the reporting and check modules (and the migrations) build SQL;
- SQLite transactions are begun explicitly, so savepoints and ``BEGIN IMMEDIATE`` work;
- a wheel built from the checkout, installed outside it, runs ``db upgrade`` and ``db current``.
"""

from __future__ import annotations

import ast
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from etl.db.engine import head_revision
from etl.db.models import users
from etl.db.store import Store
from tests.conftest import T0

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "etl"
SQL_MODULES = {"db", "reports.py", "check.py"}  # etl/db/ and the modules whose job is SQL
SQL_NAMES = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "not_", "bindparam",
             "literal", "literal_column", "column", "table", "exists", "case", "cast", "union", "values", "Exists"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def too_many_parameters(paths: list[Path]) -> list[str]:
    """Functions that take more than six parameters (``self``/``cls`` aside)."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
            if names and names[0] in ("self", "cls"):
                names = names[1:]
            count = len(names) + bool(a.vararg) + bool(a.kwarg)
            if count > 6:
                found.append(f"{path.name}:{node.lineno} {node.name} takes {count}")
    return found


def sql_builders(paths: list[Path]) -> list[str]:
    """Imports of SQL-building names from SQLAlchemy (or of sqlite3) in these files."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                names = {alias.name for alias in node.names}
                found += [f"{path.name}: {name}" for name in sorted(names & SQL_NAMES)]
                if node.module.startswith(("sqlalchemy.sql", "sqlalchemy.dialects")):
                    found.append(f"{path.name}: from {node.module}")
            if isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
                found.append(f"{path.name}: import sqlite3")
    return found


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def too_long(paths: list[Path]) -> list[str]:
    """Modules longer than ``MAX_MODULE_LINES`` lines, and functions (decorators aside, docstring included)
    longer than ``MAX_FUNCTION_LINES``."""
    found = []
    for path in paths:
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.name} has {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.name}:{node.lineno} {node.name} has {length} lines")
    return found


def test_no_module_is_over_500_lines_and_no_function_over_60() -> None:
    assert too_long(_modules()) == []


def test_no_function_takes_more_than_six_parameters() -> None:
    exempt = {"fakeapi.py"}
    assert too_many_parameters([p for p in _modules() if p.name not in exempt and p.parent.name != "cli"]) == []


def test_only_the_database_layer_builds_sql() -> None:
    assert sql_builders([p for p in _modules() if p.relative_to(PACKAGE).parts[0] not in SQL_MODULES]) == []


def test_the_structure_checks_find_what_they_look_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import sqlite3\nfrom sqlalchemy import Engine, select\n\n\n"
                   "class C:\n    def ok(self, a, b, c, d, e, f): pass\n\n\n"
                   "def f(a, b, c, d, e, h, *, g): pass\n")
    assert too_many_parameters([bad]) == ["bad.py:9 f takes 7"]
    assert sql_builders([bad]) == ["bad.py: import sqlite3", "bad.py: select"]
    assert too_long([bad]) == []
    long = tmp_path / "long.py"
    fits = [f"    x{n} = {n}" for n in range(MAX_FUNCTION_LINES - 1)]  # with its def: just fits
    over = [f"        x{n} = {n}" for n in range(MAX_FUNCTION_LINES)]  # one line more
    lines = ["def fits():", *fits, "", "", "class C:", "    @property", "    def over(self):", *over]
    lines += [""] * (MAX_MODULE_LINES + 1 - len(lines))
    long.write_text("\n".join(lines) + "\n")
    assert too_long([long]) == [f"long.py has {MAX_MODULE_LINES + 1} lines",
                                f"long.py:{MAX_FUNCTION_LINES + 5} over has {MAX_FUNCTION_LINES + 1} lines"]
    long.write_text("\n".join(lines[:-1]) + "\n")  # 500 lines: the module fits
    assert too_long([long]) == [f"long.py:{MAX_FUNCTION_LINES + 5} over has {MAX_FUNCTION_LINES + 1} lines"]


def test_migrations_live_at_the_top_level() -> None:
    assert (ROOT / "migrations" / "env.py").is_file() and (ROOT / "migrations" / "versions").is_dir()
    assert not (PACKAGE / "migrations").exists()
    assert "script_location = %(here)s/migrations" in (ROOT / "alembic.ini").read_text()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_sqlite_savepoints_roll_back_only_their_part(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(insert(users).values(id="kept", first_seen_at=T0, last_seen_at=T0))
        savepoint = conn.begin_nested()
        conn.execute(insert(users).values(id="rolled-back", first_seen_at=T0, last_seen_at=T0))
        savepoint.rollback()
        conn.execute(insert(users).values(id="after", first_seen_at=T0, last_seen_at=T0))
    with engine.connect() as conn:
        assert set(conn.scalars(select(users.c.id))) == {"kept", "after"}
    with engine.begin() as conn:
        conn.execute(users.delete())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_store_write_takes_the_sqlite_write_lock_at_begin(engine: Engine) -> None:
    store = Store(engine)
    path = engine.url.database
    assert path is not None
    with store._write():  # nothing written yet: a deferred BEGIN would hold no lock here
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()
    with store.read() as conn:  # a reader does not hold the write lock
        conn.execute(select(users.c.id)).all()
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()


def test_a_wheel_installed_outside_the_checkout_runs_its_migrations(tmp_path: Path) -> None:
    """Build a wheel from a copy of the checkout, install it (no dependencies, no index) into a fresh
    virtualenv that sees this environment's packages, and migrate a SQLite database with it."""
    source = tmp_path / "source"
    for name in ("etl", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    run = {"capture_output": True, "text": True, "timeout": 300}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)], **run)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("smartcar_etl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, **run).stdout.strip()
    # The test environment's packages (SQLAlchemy, Alembic, click...), but not its editable install of etl.
    Path(site, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", "--disable-pip-version-check", "-q", str(wheel)], **run)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{work / 'etl.db'}", "SMARTCAR_ETL_CONFIG": ""}
    env.pop("PYTHONPATH", None)
    where = subprocess.run([str(python), "-c", "import etl.db.engine as e; print(e.migrations_path())"],
                           cwd=work, env=env, check=True, **run).stdout.strip()
    assert where.startswith(site) and not where.startswith(str(ROOT))
    upgraded = subprocess.run([str(venv / "bin" / "smartcar-etl"), "db", "upgrade"], cwd=work, env=env, **run)
    assert upgraded.returncode == 0 and f"upgraded from empty to {head_revision()}" in upgraded.stdout, upgraded
    current = subprocess.run([str(venv / "bin" / "smartcar-etl"), "db", "current"], cwd=work, env=env, **run)
    assert current.returncode == 0 and current.stdout.strip() == f"{head_revision()} (latest)"
