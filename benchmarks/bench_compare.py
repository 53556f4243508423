"""Benchmark: two installations of smartcar-etl side by side, alternating, against a static server.

Each run gives each installation an empty database, imports the same ids, and times its whole
``sync`` command twice: a first pass (everything new) and an unchanged pass. The two alternate
(A B, then B A, ...), so that what the shared machine does in between weighs on both alike, and the
medians are printed with B's ratio to A. The world is rendered once and served by nginx if the
machine has it, else by an in-memory server in its own process (``static_api.py``).

Usage (A: an older checkout installed in a virtualenv of its own; B: this one):

    .venv/bin/python benchmarks/bench_compare.py \\
        --a /tmp/venv-old/bin/smartcar-etl:8 --b .venv/bin/smartcar-etl:1 \\
        [--connections 5000] [--runs 5] [--strategy ids|list] \\
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

``PATH:N`` is an installation's ``smartcar-etl`` and the ``api.concurrency`` it runs with. Without
``--postgres-url`` each pass writes a SQLite file; with it, a temporary database on that server
(``etl_bench_*``, dropped afterwards).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from static_api import serve, write_world
from throughput import config_file

from etl.db.scratch import scratch_database


def positive(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def installation(text: str) -> tuple[str, int]:
    """``PATH:N`` as (path, concurrency)."""
    path, _, concurrency = text.rpartition(":")
    if not path or not concurrency.isdigit() or not Path(path).exists():
        raise argparse.ArgumentTypeError(f"expected PATH:N with an existing smartcar-etl, got {text!r}")
    return path, int(concurrency)


def timed(binary: str, args: list[str], env: dict[str, str]) -> float:
    """Seconds that ``binary ARGS`` took; SystemExit naming it if it failed."""
    started = time.perf_counter()
    proc = subprocess.run([binary, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()[-1500:]}")
    return time.perf_counter() - started


@contextmanager
def database(directory: Path, postgres_url: str | None) -> Iterator[str]:
    """An empty database: a SQLite file in ``directory``, or a temporary one on the PostgreSQL server."""
    if postgres_url:
        with scratch_database(postgres_url, prefix="etl_bench_") as url:
            yield url
    else:
        yield f"sqlite:///{directory}/etl.db"


def passes(job: tuple[str, int], base_url: str, ids_file: Path, work: Path,
           args: argparse.Namespace) -> tuple[float, float]:
    """(first, unchanged) connections/s of one installation on an empty database."""
    binary, concurrency = job
    work.mkdir()
    config = config_file(work, base_url, concurrency)  # the rate budget on, never waited for
    with database(work, args.postgres_url) as url:
        # Nothing of the shell's job settings (the environment beats the file) nor its PYTHONPATH: each
        # installation runs its own code with the configuration above.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTCAR_") and k != "PYTHONPATH"}
        env |= {"SMARTCAR_ACCESS_TOKEN": "bench-token", "SMARTCAR_ETL_DATABASE_URL": url,
                "SMARTCAR_ETL_CONFIG": str(config)}
        timed(binary, ["db", "upgrade"], env)
        timed(binary, ["connections", "import", str(ids_file)], env)
        sync = ["sync", "--strategy", args.strategy] + (["--all"] if args.strategy == "ids" else [])
        first, unchanged = timed(binary, sync, env), timed(binary, sync, env)
    return args.connections / first, args.connections / unchanged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=installation, required=True, help="the reference: PATH:CONCURRENCY")
    parser.add_argument("--b", type=installation, required=True, help="the one compared: PATH:CONCURRENCY")
    parser.add_argument("--connections", type=positive, default=5000)
    parser.add_argument("--runs", type=positive, default=5)
    parser.add_argument("--strategy", choices=("ids", "list"), default="ids")
    parser.add_argument("--postgres-url", default=None, help="an admin URL where temporary databases may be made")
    parser.add_argument("--server", choices=("auto", "nginx", "memory"), default="auto")
    args = parser.parse_args()
    jobs = {"A": args.a, "B": args.b}
    rates: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        root.mkdir()
        ids_file = Path(tmp) / "ids.txt"
        ids_file.write_text("\n".join(write_world(root, args.connections)) + "\n")
        with serve(root, args.server) as (base_url, what):
            print(f"{args.connections:,} connections, sync --strategy {args.strategy}, "
                  f"{'PostgreSQL' if args.postgres_url else 'SQLite'}, served by {what}")
            for run in range(args.runs):
                for name in ("A", "B") if run % 2 == 0 else ("B", "A"):
                    rates[name].append(passes(jobs[name], base_url, ids_file, Path(tmp) / f"{name}{run}", args))
                    print(f"  run {run + 1} {name}: first {rates[name][-1][0]:,.0f}/s, "
                          f"unchanged {rates[name][-1][1]:,.0f}/s", flush=True)
    for index, label in enumerate(("first pass", "unchanged pass")):
        a, b = (statistics.median(rate[index] for rate in rates[name]) for name in ("A", "B"))
        print(f"{label}: median A {a:,.0f} conn/s, B {b:,.0f} conn/s, B/A {b / a:.2f}")


if __name__ == "__main__":
    main()
