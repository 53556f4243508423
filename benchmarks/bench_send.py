"""Benchmark: what one request costs through each layer, in µs, against a static server.

GETs of the rendered connections, each read whole, through: the transport alone
(``httpx.HTTPTransport.handle_request``), ``httpx.Client.send``, the job's client
(``ApiClient``: no cookies) and the job's ``send`` on it (bounded read, decoding,
a fresh response). Medians of ``--rounds`` rounds; the layers alternate within
each round, so the machine weighs on them alike.

Usage:
    .venv/bin/python benchmarks/bench_send.py [--connections 3000] [--rounds 5] [--server auto|nginx|memory]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from bench_compare import positive
from static_api import serve, write_world

from etl.api.transport import make_http_client, send

HEADERS = {"Accept": "application/json", "Authorization": "Bearer bench-token"}


def per_request(urls: list[str], one: Callable[[httpx.Request], object]) -> float:
    """µs per request of ``one`` over ``urls``."""
    started = time.perf_counter()
    for url in urls:
        one(httpx.Request("GET", url, headers=HEADERS, extensions={"timeout": httpx.Timeout(10).as_dict()}))
    return (time.perf_counter() - started) / len(urls) * 1e6


def read(response: httpx.Response) -> None:
    response.read()
    response.close()


def rounds(urls: list[str], count: int) -> dict[str, list[float]]:
    """Each layer's µs per request, ``count`` times."""
    figures: dict[str, list[float]] = {}
    for _ in range(count):
        with httpx.HTTPTransport() as transport:
            figures.setdefault("transport alone", []).append(
                per_request(urls, lambda r: read(transport.handle_request(r))))
        with httpx.Client() as client:
            figures.setdefault("httpx.Client.send", []).append(
                per_request(urls, lambda r: read(client.send(r, stream=True))))
        with make_http_client(timeout=10, concurrency=1) as job:
            figures.setdefault("ApiClient.send (no cookies)", []).append(
                per_request(urls, lambda r: read(job.send(r, stream=True))))
            figures.setdefault("the job's send", []).append(
                per_request(urls, lambda r: send(job, r, path="/connections")))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=positive, default=3000)
    parser.add_argument("--rounds", type=positive, default=5)
    parser.add_argument("--server", choices=("auto", "nginx", "memory"), default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "world"
        root.mkdir()
        ids = write_world(root, args.connections)
        with serve(root, args.server) as (base_url, what):
            print(f"{args.connections:,} GETs a round, {args.rounds} rounds, served by {what}")
            figures = rounds([f"{base_url}/connections/{i}" for i in ids], args.rounds)
    reference = statistics.median(figures["transport alone"])
    for layer, values in figures.items():
        median = statistics.median(values)
        print(f"{layer:30} {median:7.1f} µs/request ({median / reference:.2f} of the transport alone)")


if __name__ == "__main__":
    main()
