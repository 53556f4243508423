"""The demonstration and the bundled fake Smartcar API."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from etl.cli.base import State, cli
from etl.errors import ConfigError, clipped

if TYPE_CHECKING:
    from etl.fakeapi import FakeApi


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

    Its world can be changed while it runs, to rehearse change detection: POST
    /_admin/revoke or /_admin/grant (?connection=ID&permission=P), /_admin/remove
    (the user disconnects: the connection answers Smartcar's 404),
    /_admin/restore (?connection=ID), and /_admin/add (a new connection; its
    id in the answer). Only on the fake's loopback address; no token needed
    (none from a browser: a request with an Origin header is refused).

    \b
    Example:
        smartcar-etl fake-api --connections 3 --ids-file ids.txt > fake.env &
        . ./fake.env && smartcar-etl db upgrade && smartcar-etl connections import ids.txt
        smartcar-etl sync
        curl -X POST "http://127.0.0.1:8765/_admin/revoke?connection=$(head -1 ids.txt)&permission=read_charge"
        smartcar-etl sync --all && smartcar-etl report changes --since -1h
    """
    from etl.config import is_loopback_host
    from etl.fakeapi import FakeApi, urls

    if not is_loopback_host(host):
        msg = f"{clipped(host)} is not a loopback address"
        raise click.BadParameter(msg, param_hint="--host")
    fake = FakeApi(rate_limit=_bucket(rate_limit), latency=latency)
    ids = fake.populate(connections_count, seed=seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        root = _listen(stack, fake, host, port)  # first: a port in use writes no ids file
        if ids_file is not None:
            from etl.files import write_text

            write_text(ids_file, "".join(f"{i}\n" for i in ids), where="--ids-file")
        u = urls(root)
        click.echo(f"export SMARTCAR_API_BASE_URL={u['base_url']}")
        click.echo(f"export SMARTCAR_TOKEN_URL={u['token_url']}")
        click.echo(f"export SMARTCAR_CLIENT_ID={fake.client_id}")
        click.echo(f"export SMARTCAR_CLIENT_SECRET={fake.client_secret}")
        click.echo(f"# {connections_count} connections"
                   + (f", their ids in {ids_file}" if ids_file else " (--ids-file FILE writes their ids)")
                   + "; Ctrl-C to stop", err=True)
        click.echo(f"# change it: curl -X POST '{root}/_admin/revoke?connection=ID&permission=read_odometer' "
                   "(also grant, remove, restore, add; see --help)", err=True)
        sys.stdout.flush()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def _bucket(rate_limit: str | None) -> tuple[float, float] | None:
    """``--rate-limit CAPACITY/PER_MINUTE`` as (capacity, refills per second)."""
    if rate_limit is None:
        return None
    capacity, _, per_minute = rate_limit.partition("/")
    try:
        bucket = (float(capacity), float(per_minute) / 60)
    except ValueError:
        bucket = (math.nan, math.nan)
    if not all(math.isfinite(v) and v > 0 for v in bucket):
        msg = f"{rate_limit!r} is not CAPACITY/PER_MINUTE, e.g. 120/2"
        raise click.BadParameter(msg, param_hint="--rate-limit")
    return bucket


def _listen(stack: contextlib.ExitStack, fake: FakeApi, host: str, port: int) -> str:
    """Serve ``fake`` until ``stack`` closes; its root URL. A port in use (or refused) is exit 2, one line."""
    from etl.fakeapi import serve

    try:
        return stack.enter_context(serve(fake, host=host, port=port))
    except OSError as error:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        msg = f"fake-api --port: cannot listen on {where}: {error.strerror or error} (--port 0 takes a free one)"
        raise ConfigError(msg) from error
