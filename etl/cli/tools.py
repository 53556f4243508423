"""The demonstration and the bundled fake Smartcar API."""

from __future__ import annotations

import math
import signal
import sys
import threading
from pathlib import Path

import click

from etl.cli.base import State, cli
from etl.errors import clipped


@cli.command("demo")
@click.option("--database", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("smartcar-etl-demo.db"), show_default=True,
              help="SQLite file to create (an earlier demo database there is replaced; nothing else is).")
@click.option("--connections", "connections_count", type=click.IntRange(1, 10_000), default=30,
              show_default=True, help="How many connections the fake API serves (1-10,000).")
@click.option("--passes", type=click.IntRange(1, 20), default=4, show_default=True,
              help="How many sync passes to run, the fake API changing permissions between them (1-20).")
@click.pass_context
def demo_command(ctx: click.Context, database: Path, connections_count: int, passes: int) -> None:
    """Run the job against the bundled fake Smartcar API on loopback, into SQLite, and report.

    Needs no network and no credentials.

    \b
    Example:
        smartcar-etl demo && sqlite3 smartcar-etl-demo.db 'select * from permission_changes'
    """
    from etl.demo import run_demo
    from etl.logs import setup_logging

    state: State = ctx.obj
    setup_logging((state.log_level or "WARNING").upper(), state.log_format or "text")
    run_demo(database=database, connections_count=connections_count, passes=passes, out=click.echo)


def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """Refuse NaN, which passes a range check (every comparison with it is false)."""
    if not math.isfinite(value):
        msg = f"{value!r} is not a number from 0 to 60"
        raise click.BadParameter(msg)
    return value


@cli.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port to listen on (0: any free port; the printed URLs name it).")
@click.option("--connections", "connections_count", type=click.IntRange(0, 10_000_000), default=100,
              show_default=True, help="How many connections the fake application has.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the fake world: the same seed gives the same connection ids and permissions.")
@click.option("--ids-file", metavar="FILE",
              help="Write the connections' ids here, one a line, for `smartcar-etl connections import FILE`.")
@click.option("--rate-limit", metavar="CAPACITY/PER_MINUTE",
              help="Enforce a token bucket like Smartcar's (120/2 is its default): 429 with Retry-After beyond it.")
@click.option("--latency", type=click.FloatRange(0, 60), default=0.0, show_default=True, callback=_finite,
              help="Seconds every API answer takes (Smartcar's take hundreds of milliseconds).")
def fake_api_command(host: str, port: int, connections_count: int, seed: int, ids_file: str | None,
                     rate_limit: str | None, latency: float) -> None:
    """Serve the bundled fake Smartcar API on loopback until interrupted.

    Prints the environment to point the job at it. Its credentials are fake.

    \b
    Example:
        smartcar-etl fake-api --connections 1000 --ids-file ids.txt > fake.env &
        . ./fake.env && smartcar-etl connections import ids.txt && smartcar-etl sync
    """
    from etl.config import is_loopback_host
    from etl.fakeapi import FakeApi, serve, urls

    if not is_loopback_host(host):
        msg = f"{clipped(host)} is not a loopback address"
        raise click.BadParameter(msg, param_hint="--host")
    bucket = None
    if rate_limit is not None:
        capacity, _, per_minute = rate_limit.partition("/")
        try:
            bucket = (float(capacity), float(per_minute) / 60)
        except ValueError:
            bucket = None
        if bucket is None or not all(math.isfinite(v) and v > 0 for v in bucket):
            msg = f"{rate_limit!r} is not CAPACITY/PER_MINUTE, e.g. 120/2"
            raise click.BadParameter(msg, param_hint="--rate-limit")
    fake = FakeApi(rate_limit=bucket, latency=latency)
    ids = fake.populate(connections_count, seed=seed)
    if ids_file is not None:
        from etl.files import write_text

        write_text(ids_file, "".join(f"{i}\n" for i in ids), where="--ids-file")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serve(fake, host=host, port=port) as root:
        u = urls(root)
        click.echo(f"export SMARTCAR_API_BASE_URL={u['base_url']}")
        click.echo(f"export SMARTCAR_TOKEN_URL={u['token_url']}")
        click.echo(f"export SMARTCAR_CLIENT_ID={fake.client_id}")
        click.echo(f"export SMARTCAR_CLIENT_SECRET={fake.client_secret}")
        click.echo(f"# {connections_count} connections"
                   + (f", their ids in {ids_file}" if ids_file else " (--ids-file FILE writes their ids)")
                   + "; Ctrl-C to stop", err=True)
        sys.stdout.flush()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
