"""The demonstration and the bundled fake Smartcar API."""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from etl.cli.base import State, cli
from etl.errors import ConfigError, clipped

if TYPE_CHECKING:
    from etl.fakeserver import Handles

MAX_FAKE_CONNECTIONS = 10_000_000  # in all, over every application


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
              show_default=True, help="How many connections the fake application has (each one, with --applications).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the fake world: the same seed gives the same connection ids and permissions.")
@click.option("--ids-file", metavar="FILE",
              help="Write the connections' ids here, one a line, for `smartcar-etl connections import FILE`.")
@click.option("--rate-limit", metavar="CAPACITY/PER_MINUTE",
              help="Enforce a token bucket like Smartcar's (120/2 is its default): 429 with Retry-After beyond it.")
@click.option("--latency", type=click.FloatRange(0, 60), default=0.0, show_default=True, callback=_finite,
              help="Seconds every API answer takes (Smartcar's take hundreds of milliseconds).")
@click.option("--applications", "applications_count", type=click.IntRange(1, 100), default=1, show_default=True,
              help="How many applications (1-100) it serves on its one address, each with its own credentials, "
                   "--connections and --rate-limit bucket; from 2, ids files are FILE-app-N and the variables "
                   "printed are SMARTCAR_ETL_APPLICATIONS_APP_N_*.")
def fake_api_command(host: str, port: int, connections_count: int, seed: int, ids_file: str | None,
                     rate_limit: str | None, latency: float, applications_count: int) -> None:
    """Serve the bundled fake Smartcar API on loopback until interrupted.

    Prints the environment to point the job at it. Its credentials are fake.
    With --applications N it serves N applications (app-1 ... app-N) on one
    address, as Smartcar does, and prints each one's credentials.

    Its world can be changed while it runs, to rehearse change detection: POST
    /_admin/revoke or /_admin/grant (?connection=ID&permission=P), /_admin/remove
    (the user disconnects: the connection answers Smartcar's 404),
    /_admin/restore (?connection=ID), and /_admin/add (a new connection; its
    id in the answer). Only on the fake's loopback address; no token needed
    (none from a browser: a request with an Origin header is refused). With
    several applications, a verb goes to the application that has the
    connection, and add to ?application=NAME (default app-1).

    \b
    Example:
        smartcar-etl fake-api --connections 3 --ids-file ids.txt > fake.env &
        . ./fake.env && smartcar-etl db upgrade && smartcar-etl connections import ids.txt
        smartcar-etl sync
        curl -X POST "http://127.0.0.1:8765/_admin/revoke?connection=$(head -1 ids.txt)&permission=read_charge"
        smartcar-etl sync --all && smartcar-etl report changes --since -1h
        # three applications on another port: apps.env has each one's credentials and bucket,
        # ids-app-1.txt ... ids-app-3.txt their connections
        smartcar-etl fake-api --applications 3 --port 8766 --rate-limit 120/2 --ids-file ids.txt > apps.env &
    """
    from etl.config import is_loopback_host

    if not is_loopback_host(host):
        msg = f"{clipped(host)} is not a loopback address"
        raise click.BadParameter(msg, param_hint="--host")
    if applications_count * connections_count > MAX_FAKE_CONNECTIONS:
        msg = f"at most {MAX_FAKE_CONNECTIONS:,} connections in all ({applications_count} applications of " \
              f"{connections_count:,})"
        raise click.BadParameter(msg, param_hint="--connections")
    options = _FakeOptions(host=host, port=port, connections=connections_count, seed=seed, ids_file=ids_file,
                           bucket=_bucket(rate_limit), latency=latency)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        if applications_count == 1:
            _serve_one(stack, options)
        else:
            _serve_many(stack, options, applications_count)
        sys.stdout.flush()
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


@dataclass(frozen=True)
class _FakeOptions:
    """What ``fake-api`` was asked to serve."""

    host: str
    port: int
    connections: int  # each application's
    seed: int
    ids_file: str | None
    bucket: tuple[float, float] | None
    latency: float


def _serve_one(stack: contextlib.ExitStack, o: _FakeOptions) -> None:
    """One application: its ids in ``--ids-file``, its credentials as SMARTCAR_CLIENT_ID and _SECRET."""
    from etl.fakeapi import FakeApi, urls

    fake = FakeApi(rate_limit=o.bucket, latency=o.latency)
    ids = fake.populate(o.connections, seed=o.seed)
    root = _listen(stack, fake, o.host, o.port)  # first: a port in use writes no ids file
    if o.ids_file is not None:
        _write_ids(o.ids_file, ids)
    u = urls(root)
    click.echo(f"export SMARTCAR_API_BASE_URL={u['base_url']}")
    click.echo(f"export SMARTCAR_TOKEN_URL={u['token_url']}")
    click.echo(f"export SMARTCAR_CLIENT_ID={fake.client_id}")
    click.echo(f"export SMARTCAR_CLIENT_SECRET={fake.client_secret}")
    click.echo(f"# {o.connections} connections"
               + (f", their ids in {o.ids_file}" if o.ids_file else " (--ids-file FILE writes their ids)")
               + "; Ctrl-C to stop", err=True)
    click.echo(f"# change it: curl -X POST '{root}/_admin/revoke?connection=ID&permission=read_odometer' "
               "(also grant, remove, restore, add; see --help)", err=True)


def _serve_many(stack: contextlib.ExitStack, o: _FakeOptions, count: int) -> None:
    """``count`` applications on one address: an ids file each, and each one's SMARTCAR_ETL_APPLICATIONS_*."""
    from etl.fakeapps import FakeApplications, ids_file_for

    apps = FakeApplications.numbered(count, rate_limit=o.bucket, latency=o.latency)
    ids = apps.populate(o.connections, seed=o.seed)
    root = _listen(stack, apps, o.host, o.port)  # first: a port in use writes no ids file
    files = {name: ids_file_for(o.ids_file, name) for name in apps.names} if o.ids_file is not None else {}
    for name, path in files.items():
        _write_ids(path, ids[name])
    for variable, value in apps.environment(root).items():
        click.echo(f"export {variable}={value}")
    shown = ", ".join(files.values()) if len(files) <= 3 else f"{files[apps.names[0]]} ... {files[apps.names[-1]]}"
    click.echo(f"# {count} applications of {o.connections} connections each"
               + (f", their ids in {shown}" if files else " (--ids-file FILE writes their ids, a file each)")
               + "; Ctrl-C to stop", err=True)
    click.echo(f"# change it: curl -X POST '{root}/_admin/revoke?connection=ID&permission=read_odometer' "
               "(the application that has ID; also grant, remove, restore, add?application=app-2; see --help)",
               err=True)


def _write_ids(path: str, ids: list[str]) -> None:
    """The ids, one a line, for `smartcar-etl connections import FILE`."""
    from etl.files import write_text

    write_text(path, "".join(f"{i}\n" for i in ids), where="--ids-file")


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


def _listen(stack: contextlib.ExitStack, fake: Handles, host: str, port: int) -> str:
    """Serve ``fake`` until ``stack`` closes; its root URL. A port in use (or refused) is exit 2, one line."""
    from etl.fakeapi import serve

    try:
        return stack.enter_context(serve(fake, host=host, port=port))
    except OSError as error:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        msg = f"fake-api --port: cannot listen on {where}: {error.strerror or error} (--port 0 takes a free one)"
        raise ConfigError(msg) from error
