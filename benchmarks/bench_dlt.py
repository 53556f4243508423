"""Benchmark: the job's `sync --strategy ids` beside dlt's merge pipeline, the same ids, PostgreSQL, one run.

Both fetch every connection of the static server (``static_api.py``: nginx, or
the in-memory server) and store it in a fresh PostgreSQL database of their own.
dlt is installed only into ``.venv-dlt`` (made on first use, from the package
index), never into the project's environment; its pipeline is
``dlt_pipeline.py``. Prints connections/s of each, first and second pass, and
the ratio job / dlt.

    .venv/bin/python benchmarks/bench_dlt.py [--connections 100000] [--dlt-version 1.31.*]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from bench_sync import server_database
from sqlalchemy.engine import make_url
from static_api import serve, write_world
from throughput import TOKEN, command, config_file

HERE = Path(__file__).resolve().parent
DLT_VENV = HERE.parent / ".venv-dlt"


def dlt_python(version: str) -> Path:
    """The interpreter of .venv-dlt, made (with dlt and its PostgreSQL driver) if it is not there yet."""
    python = DLT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DLT_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        f"dlt[postgres]=={version}"], check=True)
    return python


def dlt_passes(python: Path, base_url: str, ids_file: Path, url: str, work: Path) -> list[float]:
    """Seconds of two dlt runs (the first loads everything, the second merges the same documents)."""
    parts = make_url(url)  # dlt insists on a password: any will do with trust authentication
    plain = parts.set(drivername="postgresql", password=parts.password or "unused").render_as_string(
        hide_password=False)
    seconds = []
    for _ in range(2):
        out = subprocess.run([str(python), str(HERE / "dlt_pipeline.py"), base_url, str(ids_file), plain, str(work)],
                             check=False, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"dlt's pipeline failed:\n{out.stderr[-3000:]}")
        seconds.append(float(out.stdout.strip().splitlines()[-1]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dlt-version", default="1.31.*")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "ETL_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    python = dlt_python(args.dlt_version)
    version = subprocess.run([str(python), "-c", "import dlt; print(dlt.__version__)"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ids = write_world(directory / "www", args.connections)
        ids_file = directory / "ids.txt"
        ids_file.write_text("\n".join(ids) + "\n")
        with serve(directory / "www") as (base_url, what):
            with contextmanager(server_database)(args.postgres_url) as url:
                dlt_seconds = dlt_passes(python, base_url, ids_file, url, directory / "dlt")
            with contextmanager(server_database)(args.postgres_url) as url:
                env = {**os.environ, "SMARTCAR_ACCESS_TOKEN": TOKEN, "SMARTCAR_ETL_DATABASE_URL": url,
                       "SMARTCAR_ETL_CONFIG": str(config_file(directory, base_url, args.concurrency))}
                command(["db", "upgrade"], env)
                command(["connections", "import", str(ids_file)], env)
                job_seconds = [command(["sync", "--strategy", "ids", "--all"], env)[0] for _ in range(2)]
    n = args.connections
    print(f"{n} connections from {what}, PostgreSQL; dlt {version}, merge on id; job concurrency {args.concurrency}")
    print(f"{'pass':10} {'dlt conn/s':>11} {'job conn/s':>11} {'job / dlt':>10}")
    for label, d, j in zip(("first", "second"), dlt_seconds, job_seconds, strict=True):
        print(f"{label:10} {n / d:11.0f} {n / j:11.0f} {d / j:10.2f}")


if __name__ == "__main__":
    main()
