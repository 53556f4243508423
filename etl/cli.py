"""The command line: parse options, load config, call one library function, map errors to exit codes.

Exit codes: 0 done, 1 some connections failed, 2 bad usage or configuration,
3 aborted (authentication, billing, database unreachable), 4 another run holds the lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click
from sqlalchemy import Engine

from etl import __version__
from etl.config import LOG_FORMATS, LOG_LEVELS, Config, load_config
from etl.errors import EtlError
from etl.output import FORMATS, render

log = logging.getLogger("etl")


class EtlGroup(click.Group):
    """A click group that turns EtlError into its message on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EtlError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)


@dataclass
class State:
    """Global options, and the config and engine built from them on first use."""

    config_path: str | None
    log_level: str | None
    log_format: str | None
    _config: Config | None = None
    _engines: list[Engine] = field(default_factory=list)

    @property
    def config(self) -> Config:
        if self._config is None:
            from etl.logs import setup_logging

            self._config = load_config(
                self.config_path,
                overrides={"logging.level": self.log_level, "logging.format": self.log_format},
            )
            setup_logging(self._config.logging.level, self._config.logging.format)
        return self._config

    def engine(self) -> Engine:
        from etl.db.engine import make_engine

        engine = make_engine(self.config.database_url)
        self._engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()


pass_state = click.make_pass_decorator(State)


@click.group(cls=EtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH",
              help="YAML config (else $SMARTCAR_ETL_CONFIG, else ./config.yaml if present).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Default INFO.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help="text (default) or json lines, on stderr.")
@click.version_option(__version__, prog_name="smartcar-etl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str | None, log_format: str | None) -> None:
    """Mirror Smartcar connections, vehicles and users into SQL, with exact permission history.

    \b
    Example:
        smartcar-etl db upgrade
        smartcar-etl connections import ids.txt
        smartcar-etl sync
    """
    state = State(config_path, log_level, log_format)
    ctx.obj = state
    ctx.call_on_close(state.close)


# -- db ---------------------------------------------------------------------------------------

@cli.group(cls=EtlGroup)
def db() -> None:
    """Create and inspect the database schema (Alembic migrations).

    \b
    Example:
        smartcar-etl db upgrade && smartcar-etl db current
    """


@db.command("upgrade")
@pass_state
def db_upgrade(state: State) -> None:
    """Apply all migrations to the configured database; running it twice changes nothing.

    \b
    Example:
        SMARTCAR_ETL_DATABASE_URL=postgresql+psycopg://etl@db/etl smartcar-etl db upgrade
    """
    from etl.db.engine import safe_url, upgrade

    before, after = upgrade(state.engine())
    where = safe_url(state.config.database_url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'empty'} to {after}")


@db.command("current")
@pass_state
def db_current(state: State) -> None:
    """Print the database's migration revision (and whether it is the latest).

    \b
    Example:
        smartcar-etl db current
    """
    from etl.db.engine import current_revision, head_revision

    current, head = current_revision(state.engine()), head_revision()
    if current is None:
        click.echo(f"none (empty database; latest is {head})")
    else:
        click.echo(f"{current}" + (" (latest)" if current == head else f" (latest is {head})"))


# -- connections ------------------------------------------------------------------------------

@cli.group(cls=EtlGroup)
def connections() -> None:
    """Choose which connection ids are tracked.

    \b
    Example:
        smartcar-etl connections add 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """


def _report_tracked(result: Any) -> None:
    click.echo(f"{result.added} added, {result.retracked} tracked again, {result.unchanged} already tracked")


@connections.command("add")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_state
def connections_add(state: State, ids: tuple[str, ...]) -> None:
    """Start tracking these connection ids (UUIDs). Nothing is stored if any id is invalid.

    \b
    Example:
        smartcar-etl connections add 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import parse_ids, track

    parsed = parse_ids(ids, source="arguments", arguments=True)
    _report_tracked(track(state.engine(), parsed))


@connections.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@pass_state
def connections_import(state: State, file: TextIO) -> None:
    """Track the ids in FILE (- for stdin): one a line, blank lines and # comments ignored.

    Every invalid id is reported with its line number, and then nothing is stored.

    \b
    Example:
        smartcar-etl connections import ids.txt
        psql -Atc 'select connection_id from app.cars' | smartcar-etl connections import -
    """
    from etl.tracking import parse_ids, track

    parsed = parse_ids(file, source=file.name if file.name != "<stdin>" else "stdin")
    _report_tracked(track(state.engine(), parsed))


@connections.command("list")
@click.option("--all", "include_untracked", is_flag=True, help="Include untracked connections.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@pass_state
def connections_list(state: State, include_untracked: bool, fmt: str) -> None:
    """Tracked connections with status, open permissions, last success and last error.

    \b
    Example:
        smartcar-etl connections list --format csv > connections.csv
    """
    from etl.tracking import LIST_COLUMNS, list_connections

    rows = list_connections(state.engine(), include_untracked=include_untracked)
    click.echo(render(rows, LIST_COLUMNS, fmt))


@connections.command("untrack")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_state
def connections_untrack(state: State, ids: tuple[str, ...]) -> None:
    """Stop polling these ids; their rows and history stay.

    \b
    Example:
        smartcar-etl connections untrack 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import parse_ids, untrack

    parsed = parse_ids(ids, source="arguments", arguments=True)
    changed, unknown = untrack(state.engine(), parsed)
    for connection_id in unknown:
        click.echo(f"Warning: {connection_id} is not a known connection", err=True)
    click.echo(f"{changed} untracked")


# -- sync -------------------------------------------------------------------------------------

@cli.command("sync")
@click.option("--strategy", type=click.Choice(("auto", "ids", "list")),
              help="ids: one GET per due tracked connection; list: the full listing, 100 a page; "
                   "auto (default, or sync.strategy): whichever needs fewer requests.")
@click.option("--all", "ignore_due", is_flag=True,
              help="Every tracked connection, due or not (failing and deleted ones included).")
@click.option("--metrics-file", metavar="PATH",
              help="Write Prometheus metrics here after the run (node_exporter textfile collector); "
                   "default: metrics.textfile from the config.")
@click.pass_context
def sync_command(ctx: click.Context, strategy: str | None, ignore_due: bool, metrics_file: str | None) -> None:
    """One pass now over the tracked connections that are due; what cron calls.

    A connection is due when it has not been fetched for schedule.interval, or
    when its retry or re-check time has come (failing connections back off;
    deleted ones are re-checked daily). Only one run at a time per database.

    Exit 0: every connection fetched and stored, or found deleted; 1: some failed;
    2: bad configuration; 3: aborted (credentials refused, billing, database down);
    4: skipped, another run holds the lock.

    \b
    Example:
        SMARTCAR_CLIENT_ID=... SMARTCAR_CLIENT_SECRET=... smartcar-etl sync
        smartcar-etl sync --strategy list   # every connection of the application
    """
    from etl.lock import LockHeld
    from etl.metrics import Metrics
    from etl.sync import sync

    state: State = ctx.obj
    textfile = metrics_file or state.config.metrics.textfile
    metrics = Metrics() if textfile else None
    engine = state.engine()
    try:
        result = sync(state.config, engine, ignore_due=ignore_due, strategy=strategy, metrics=metrics)
    except LockHeld:
        if metrics is not None:
            metrics.lock_skips.inc()
        raise
    finally:
        if metrics is not None and textfile:
            _write_metrics(metrics, engine, textfile)
    click.echo(result.summary())
    ctx.exit(result.exit_code)


def _write_metrics(metrics: Any, engine: Engine, path: str) -> None:
    """Write the metrics file even after a failed run: that is when it matters most."""
    try:
        metrics.load_last_success(engine)
        metrics.write_textfile(path)
    except Exception as error:  # never let metrics hide the run's own outcome
        log.warning("could not write metrics to %s: %s", path, error)


class Instant(click.ParamType):  # type: ignore[type-arg]
    """An ISO-8601 time on the command line; without an offset it is UTC; a date alone is its midnight."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time like 2026-03-01 or 2026-03-01T08:00:00+01:00",
                      param, ctx)
        return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                             help="table for people; csv (with a header row) and json for machines.")


@cli.group(cls=EtlGroup)
def report() -> None:
    """Canned reports on the stored history; --format table|csv|json.

    \b
    Example:
        smartcar-etl report permissions --as-of 2026-03-01 --permission read_location
    """


@report.command("permissions")
@click.option("--as-of", "as_of", type=Instant(), required=True, help="The instant (ISO-8601; UTC if no offset).")
@click.option("--permission", help="Only this permission, e.g. read_location.")
@format_option
@pass_state
def report_permissions(state: State, as_of: dt.datetime, permission: str | None, fmt: str) -> None:
    """Which connections held which permissions at an instant.

    \b
    Example:
        smartcar-etl report permissions --as-of 2026-03-01T00:00:00Z --format csv
    """
    from etl.reports import PERMISSIONS_COLUMNS, permissions_at

    click.echo(render(permissions_at(state.engine(), as_of, permission=permission), PERMISSIONS_COLUMNS, fmt))


@report.command("changes")
@click.option("--since", type=Instant(), required=True, help="From this instant (included).")
@click.option("--until", type=Instant(), help="Up to this instant (excluded); default: now.")
@click.option("--permission", help="Only this permission, e.g. read_location.")
@format_option
@pass_state
def report_changes(state: State, since: dt.datetime, until: dt.datetime | None, permission: str | None,
                   fmt: str) -> None:
    """Grants and revocations observed in a window, oldest first.

    \b
    Example:
        smartcar-etl report changes --since 2026-03-02 --until 2026-03-09 --permission read_location
    """
    from etl.reports import CHANGES_COLUMNS, changes_between

    if until is not None and until <= since:
        msg = "--until must be later than --since"
        raise click.BadParameter(msg, param_hint="--until")
    click.echo(render(changes_between(state.engine(), since, until, permission=permission), CHANGES_COLUMNS, fmt))


@report.command("fleet")
@format_option
@pass_state
def report_fleet(state: State, fmt: str) -> None:
    """Connections by make, powertrain, mode and status.

    \b
    Example:
        smartcar-etl report fleet --format json
    """
    from etl.reports import FLEET_COLUMNS, fleet

    click.echo(render(fleet(state.engine()), FLEET_COLUMNS, fmt))


@cli.command("check")
@click.pass_context
def check_command(ctx: click.Context) -> None:
    """Verify the history invariants on the whole database; exit 1 naming each violation.

    \b
    Example:
        smartcar-etl check || alert "smartcar-etl history is inconsistent"
    """
    from etl.check import check_history

    state: State = ctx.obj
    result = check_history(state.engine())
    for violation in result.violations:
        click.echo(violation)
    if result.ok:
        click.echo(f"history is consistent: {result.grants} grant intervals and {result.changes} changes checked")
    else:
        click.echo(f"{len(result.violations)} violation(s) found", err=True)
        ctx.exit(1)


class _Bar:
    """A progress bar on stderr (count, rate, time left), for a terminal only."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._started = time.monotonic()
        self._done = 0

    def start(self, total: int | None) -> None:
        self._bar = click.progressbar(length=max(total or 0, 1), label="backfill", file=sys.stderr,
                                      show_pos=True, show_eta=True, show_percent=True,
                                      item_show_func=lambda rate: rate)
        self._bar.__enter__()

    def advance(self, count: int, total: int | None = None) -> None:
        if total and total != self._bar.length:
            self._bar.length = total
        self._done += count
        rate = self._done / max(time.monotonic() - self._started, 1e-6)
        self._bar.update(count, f"{rate:.1f}/s")

    def finish(self) -> None:
        self._bar.__exit__(None, None, None)


@cli.command("backfill")
@click.option("--ids-file", type=click.File("r", encoding="utf-8"),
              help="Connection ids to fetch, one a line (- for stdin); they become tracked.")
@click.option("--all", "from_listing", is_flag=True, help="Every connection of the full listing.")
@click.option("--resume", is_flag=True, help="Continue the interrupted backfill of the same ids (or listing).")
@click.option("--dry-run", is_flag=True, help="Print what would be fetched and how long the rate limit makes "
              "it take; fetch and write nothing (--all sends one listing request to count).")
@click.pass_context
def backfill_command(ctx: click.Context, ids_file: TextIO | None, from_listing: bool, resume: bool,
                     dry_run: bool) -> None:
    """A large one-off fetch, with a progress bar on a terminal; resumable.

    Each batch stored is a checkpoint: after an interruption (Ctrl-C, a crash,
    SIGKILL) the same command with --resume fetches only what is left.

    \b
    Example:
        smartcar-etl backfill --ids-file all-ids.txt --dry-run
        smartcar-etl backfill --ids-file all-ids.txt          # interrupted? then:
        smartcar-etl backfill --ids-file all-ids.txt --resume
    """
    from etl.backfill import Source, backfill
    from etl.backfill import dry_run as describe
    from etl.tracking import parse_ids

    if (ids_file is None) == (not from_listing):
        msg = "give exactly one of --ids-file FILE and --all"
        raise click.UsageError(msg)
    state: State = ctx.obj
    if ids_file is not None:
        name = ids_file.name if ids_file.name != "<stdin>" else "stdin"
        source = Source(name=name, ids=parse_ids(ids_file, source=name))
    else:
        source = Source(name="the full listing")
    engine = state.engine()
    if dry_run:
        click.echo(describe(state.config, engine, source, resume=resume).describe())
        return
    progress = _Bar() if sys.stderr.isatty() else None
    result = backfill(state.config, engine, source, resume=resume, progress=progress)
    click.echo(result.summary())
    ctx.exit(result.exit_code)


@cli.command("daemon")
@click.option("--interval", metavar="DURATION", help="Run a pass every DURATION (90s, 15m, 1h); "
              "overrides schedule.interval.")
@click.option("--cron", metavar="EXPR", help="Run passes on a crontab schedule (UTC), e.g. '*/15 * * * *'; "
              "overrides schedule.cron.")
@click.pass_context
def daemon_command(ctx: click.Context, interval: str | None, cron: str | None) -> None:
    """Run passes on a schedule until SIGTERM or SIGINT, serving Prometheus metrics.

    One pass at a time; a pass that finds the lock held (a cron sync, another
    daemon) is skipped. On SIGTERM the requests in flight finish, what they
    fetched is stored, the run is recorded, and the daemon exits 0 within
    daemon.stop_timeout (default 30s).

    \b
    Example:
        smartcar-etl --log-format json daemon --interval 15m
    """
    from dataclasses import replace

    from etl.config import parse_duration
    from etl.scheduler import Daemon

    state: State = ctx.obj
    config = state.config
    if interval is not None and cron is not None:
        msg = "--interval and --cron exclude each other"
        raise click.UsageError(msg)
    if interval is not None:
        seconds = parse_duration(interval)
        if seconds is None:
            msg = f"{interval!r} is not a duration like 90s, 15m or 1h"
            raise click.BadParameter(msg, param_hint="--interval")
        config = replace(config, schedule=replace(config.schedule, interval_seconds=seconds, cron=None))
    if cron is not None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(cron)
        except ValueError as error:
            msg = f"{cron!r} is not a crontab expression: {error}"
            raise click.BadParameter(msg, param_hint="--cron") from None
        config = replace(config, schedule=replace(config.schedule, cron=cron))
    ctx.exit(Daemon(config, state.engine()).serve())


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of tables.")
@click.option("--runs", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many recent runs.")
@pass_state
def status_command(state: State, as_json: bool, runs: int) -> None:
    """Recent runs, tracked connections by status, and the connections that are failing.

    \b
    Example:
        smartcar-etl status --json | jq '.failing[] | .connection_id'
    """
    import json

    from etl.status import FAILING_COLUMNS, RUN_COLUMNS, status_report

    report = status_report(state.engine(), runs=runs)
    if as_json:
        click.echo(json.dumps(report, default=lambda v: v.isoformat(), indent=2))
        return
    counts = report["connections"]
    last = report["last_success_at"]
    click.echo(f"Last successful run finished: {last.isoformat() if last else 'never'}\n")
    click.echo("Recent runs:")
    click.echo(render(report["runs"], RUN_COLUMNS))
    click.echo("\nTracked connections: " + ", ".join(f"{counts[s]} {s}" for s in ("pending", "active", "deleted"))
               + f" ({counts['untracked']} untracked)")
    click.echo(f"\nFailing connections ({report['failing_total']}):")
    click.echo(render(report["failing"], FAILING_COLUMNS))


# -- demo and fake API ------------------------------------------------------------------------

@cli.command("demo")
@click.option("--database", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("smartcar-etl-demo.db"), show_default=True,
              help="SQLite file to create (an earlier demo database there is replaced; nothing else is).")
@click.option("--connections", "connections_count", type=click.IntRange(1, 10_000), default=30,
              show_default=True)
@click.option("--passes", type=click.IntRange(1, 20), default=4, show_default=True)
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


@cli.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--connections", "connections_count", type=click.IntRange(0, 10_000_000), default=100,
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--rate-limit", metavar="CAPACITY/PER_MINUTE",
              help="Enforce a token bucket like Smartcar's (120/2 is its default): 429 with Retry-After beyond it.")
def fake_api_command(host: str, port: int, connections_count: int, seed: int, rate_limit: str | None) -> None:
    """Serve the bundled fake Smartcar API on loopback until interrupted.

    Prints the environment to point the job at it. Its credentials are fake.

    \b
    Example:
        smartcar-etl fake-api --connections 1000 --port 8765 --rate-limit 120/2
    """
    from etl.config import is_loopback_host
    from etl.fakeapi import FakeApi, serve, urls

    if not is_loopback_host(host):
        msg = f"{host!r} is not a loopback address"
        raise click.BadParameter(msg, param_hint="--host")
    bucket = None
    if rate_limit is not None:
        capacity, _, per_minute = rate_limit.partition("/")
        try:
            bucket = (float(capacity), float(per_minute) / 60)
        except ValueError:
            bucket = None
        if bucket is None or min(bucket) <= 0:
            msg = f"{rate_limit!r} is not CAPACITY/PER_MINUTE, e.g. 120/2"
            raise click.BadParameter(msg, param_hint="--rate-limit")
    fake = FakeApi(rate_limit=bucket)
    fake.populate(connections_count, seed=seed)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serve(fake, host=host, port=port) as root:
        u = urls(root)
        click.echo(f"export SMARTCAR_API_BASE_URL={u['base_url']}")
        click.echo(f"export SMARTCAR_TOKEN_URL={u['token_url']}")
        click.echo(f"export SMARTCAR_CLIENT_ID={fake.client_id}")
        click.echo(f"export SMARTCAR_CLIENT_SECRET={fake.client_secret}")
        click.echo(f"# {connections_count} connections; Ctrl-C to stop", err=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def main() -> None:
    """Console script entry point."""
    cli(prog_name="smartcar-etl")
