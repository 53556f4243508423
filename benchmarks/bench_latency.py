"""The latency case: a slow API (every answer takes LATENCY seconds) and CONCURRENCY requests in flight.

Starts `smartcar-etl fake-api --latency` in its own process on loopback, then, in one run:

- a plain thread pool of CONCURRENCY workers sharing one httpx.Client (the reference);
- the job's whole `sync` command (`python -m etl sync --all --strategy ids`, a subprocess:
  interpreter start-up, migrations check and all) into a fresh SQLite database;

and prints connections/s beside the ceiling CONCURRENCY / LATENCY and the ratios.

    .venv/bin/python benchmarks/bench_latency.py [--connections 1600 --latency 0.2 --concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sync import free_port  # type: ignore[import-not-found]  # noqa: E402


def start(count: int, port: int, latency: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "etl", "fake-api", "--connections", str(count), "--port",
                             str(port), "--latency", str(latency)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(4)]  # the exports: base URL, token URL, client id, secret
    proc.env = dict(line.strip().removeprefix("export ").split("=", 1) for line in lines)  # type: ignore[attr-defined]
    return proc


def ids_of(env: dict[str, str], count: int) -> tuple[list[str], str]:
    with httpx.Client(timeout=30) as http:
        token = http.post(env["SMARTCAR_TOKEN_URL"], data={
            "grant_type": "client_credentials", "client_id": env["SMARTCAR_CLIENT_ID"],
            "client_secret": env["SMARTCAR_CLIENT_SECRET"]}).json()["access_token"]
        ids: list[str] = []
        for page in range(1, -(-count // 100) + 1):
            body = http.get(f"{env['SMARTCAR_API_BASE_URL']}/connections", params={
                "page[number]": page, "page[size]": 100}, headers={"Authorization": f"Bearer {token}"}).json()
            ids += [item["id"] for item in body["data"]]
    return ids, token


def reference(env: dict[str, str], ids: list[str], token: str, concurrency: int) -> float:
    """A plain thread pool sharing one httpx.Client: GET and parse each connection, store nothing."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=30, limits=limits, headers={"Authorization": f"Bearer {token}"}) as http:
        def get(connection_id: str) -> None:
            http.get(f"{env['SMARTCAR_API_BASE_URL']}/connections/{connection_id}").json()

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(get, ids))
        return len(ids) / (time.perf_counter() - started)


def whole_sync(env: dict[str, str], ids: list[str], concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_env = {**os.environ, **env, "SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp}/etl.db",
                   "SMARTCAR_ETL_CONFIG": str(Path(tmp) / "config.yaml")}
        Path(tmp, "config.yaml").write_text(f"api:\n  concurrency: {concurrency}\n"
                                            "rate_limit:\n  capacity: 1000000\n  per_minute: 6000000\n")
        etl = [sys.executable, "-m", "etl"]
        subprocess.run([*etl, "db", "upgrade"], env=run_env, check=True, capture_output=True)
        subprocess.run([*etl, "connections", "import", "-"], env=run_env, check=True, capture_output=True,
                       input="\n".join(ids), text=True)
        started = time.perf_counter()
        done = subprocess.run([*etl, "sync", "--all", "--strategy", "ids"], env=run_env, capture_output=True,
                              text=True)
        elapsed = time.perf_counter() - started
        assert done.returncode == 0, done.stderr[-2000:]
        return len(ids) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1600)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ceiling = args.concurrency / args.latency
    proc = start(args.connections, free_port(), args.latency)
    try:
        env = proc.env  # type: ignore[attr-defined]
        ids, token = ids_of(env, args.connections)
        print(f"{len(ids)} connections, latency {args.latency:g}s, concurrency {args.concurrency}: "
              f"ceiling {ceiling:.1f}/s")
        print(f"{'round':>5} {'reference conn/s':>17} {'ratio':>6} {'sync conn/s':>12} {'ratio':>6}")
        for n in range(1, args.rounds + 1):
            ref = reference(env, ids, token, args.concurrency)
            job = whole_sync(env, ids, args.concurrency)
            print(f"{n:>5} {ref:>17.1f} {ref / ceiling:>6.2f} {job:>12.1f} {job / ceiling:>6.2f}")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
