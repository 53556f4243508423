"""The root command group, its global options, and what every command shares.

The CLI only translates: each command parses its options, loads the config,
calls one library function and turns ``EtlError`` into a message on stderr and
its exit code: 0 done, 1 some connections failed, 2 bad usage or configuration,
3 aborted (authentication, billing, database unreachable), 4 another run holds the lock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from etl.db.store import Store

from etl.clock import utcnow
from etl.config import LOG_FORMATS, LOG_LEVELS, Config, load_config, parse_duration, unknown_variables
from etl.errors import EtlError, clipped, one_line
from etl.output import FORMATS

log = logging.getLogger("etl")


_CLICK_OWN = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


class EtlGroup(click.Group):
    """A click group that turns every error into one line on stderr and an exit code, never a traceback.

    EtlError: its message and exit code. A closed stdout (``status | head``): exit 0, quietly.
    Anything else is an internal error: one line here, the traceback only inside
    the log's JSON record (field ``exception``), exit 3.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            try:
                return super().invoke(ctx)
            finally:
                sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except EtlError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(error.exit_code)
        except BrokenPipeError:
            # The reader went away; send whatever Python still flushes at exit to /dev/null.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
        except _CLICK_OWN:
            raise
        except Exception as error:
            log.error("internal error: %s", one_line(error), exc_info=True)
            click.echo(f"Error: internal error ({one_line(error)}); the run, if any, is recorded as aborted",
                       err=True)
            ctx.exit(3)


@dataclass
class State:
    """Global options, and the config and engine built from them on first use."""

    config_path: str | None
    log_level: str | None
    log_format: str | None
    now: Callable[[], dt.datetime] = utcnow  # the clock --as-of, --since and --until count from
    _config: Config | None = None
    _stores: list[Store] = field(default_factory=list)

    @property
    def config(self) -> Config:
        """The config, loaded once; its warnings and unknown SMARTCAR_ETL_* variables are logged then."""
        if self._config is None:
            from etl.logs import setup_logging

            try:
                self._config = load_config(
                    self.config_path,
                    overrides={"logging.level": self.log_level, "logging.format": self.log_format},
                    option_names={"logging.level": "--log-level", "logging.format": "--log-format"},
                )
            except EtlError:
                unknown = unknown_variables_warning()
                if unknown:  # a typo may be why it failed; logging is not set up yet
                    click.echo(f"Warning: {unknown}", err=True)
                raise
            setup_logging(self._config.logging.level, self._config.logging.format)
            for warning in (unknown_variables_warning(), *self._config.warnings):
                if warning:
                    log.warning("%s", warning)
        return self._config

    def store(self, *, create: bool = False) -> Store:
        """The configured database; only ``create`` makes a missing SQLite file."""
        from etl.db.engine import make_engine
        from etl.db.store import Store

        if self._stores and not create:
            return self._stores[0]
        store = Store(make_engine(self.config.database_url, create=create), archive=self.config.archive.enabled)
        self._stores.append(store)
        if len(self._stores) == 1:
            self._tell_unconfigured(store)
        return store

    def _tell_unconfigured(self, store: Store) -> None:
        """Warn, once a command, of applications whose rows the configuration does not name (renamed, or
        ``api.application`` set on an existing database): they keep their rows and are not synced."""
        from etl.db.engine import head_revision

        try:
            if store.current_revision() != head_revision():
                return  # not migrated yet (db upgrade), or unreachable: the command itself says so
            stored = store.stored_applications()
        except Exception as error:  # never let a warning stand in the way of the command
            log.debug("could not read the database's applications: %s", one_line(error))
            return
        for name in sorted(set(stored) - set(self.config.application_names())):
            log.warning("the database holds %d connection(s) of application %s, which the configuration does not "
                        "name: they are kept, and not synced (if it was renamed: `smartcar-etl applications "
                        "rename %s NEW-NAME`)", stored[name], name, name)

    def applications(self, chosen: tuple[str, ...], *, one: str | None = None) -> list[str]:
        """The configured applications a command works on: ``chosen`` (``--application``, each configured), or
        every configured one. ``one`` (the command's name): exactly one is needed, so with several configured
        ``--application`` is required."""
        configured = self.config.application_names()
        unknown = [name for name in chosen if name not in configured]
        if unknown:
            msg = (f"{clipped(unknown[0])} is not a configured application (configured: {', '.join(configured)})")
            raise click.BadParameter(msg, param_hint="--application")
        names = list(dict.fromkeys(chosen)) or configured
        if one is not None and len(names) > 1:
            msg = (f"{one} works on one application: name it with --application "
                   f"(configured: {', '.join(configured)})")
            raise click.UsageError(msg)
        return names

    def readable(self, chosen: tuple[str, ...]) -> list[str] | None:
        """``--application`` names of a command that reads: each configured or held by the database (an
        application no longer configured keeps its rows); None without any (every application)."""
        if not chosen:
            return None
        store = self.store()
        store.require_migrated()
        known = {*self.config.application_names(), *store.stored_applications()}
        unknown = [name for name in chosen if name not in known]
        if unknown:
            msg = (f"{clipped(unknown[0])} is neither configured nor in the database "
                   f"(known: {', '.join(sorted(known))})")
            raise click.BadParameter(msg, param_hint="--application")
        return list(dict.fromkeys(chosen))

    def application(self, name: str) -> tuple[Config, Store]:
        """The configuration and the store as application ``name`` sees them."""
        return self.config.for_application(name), self.store().scoped(name)

    def close(self) -> None:
        for store in self._stores:
            store.engine.dispose()


pass_state = click.make_pass_decorator(State)
# Kubernetes puts these into every pod of a namespace with a Service named smartcar-etl: not typos.
SERVICE_LINKS = re.compile(r"SMARTCAR_ETL_(SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_[A-Z]+)?)?)")


def unknown_variables_warning() -> str | None:
    """One warning for the SMARTCAR_ETL_* variables that set nothing (names only, never their values)."""
    unknown = [name for name in unknown_variables(os.environ) if not SERVICE_LINKS.fullmatch(name.split(" ")[0])]
    if not unknown:
        return None
    more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
    return f"SMARTCAR_ETL_* variables that are not settings, ignored: {', '.join(unknown[:20])}{more}"


@click.group(cls=EtlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH",
              help="YAML config (else $SMARTCAR_ETL_CONFIG, else ./config.yaml if present).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="Default INFO.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help="text (default) or json lines, on stderr.")
@click.version_option(package_name="smartcar-etl", prog_name="smartcar-etl")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, log_level: str | None, log_format: str | None) -> None:
    """Mirror Smartcar connections, vehicles and users into SQL, with exact permission history.

    \b
    Example:
        smartcar-etl db upgrade
        smartcar-etl connections import ids.txt
        smartcar-etl sync
    """
    # A caller (a test) may fix the clock: CliRunner().invoke(cli, args, obj=Seams(now=clock)).
    state = State(config_path, log_level, log_format, now=getattr(ctx.obj, "now", utcnow))
    ctx.obj = state
    ctx.call_on_close(state.close)


OFFSET_RE = re.compile(r"([+-])\s*([0-9]+(?:\.[0-9]+)?\s*[smhd])")
# Short: the refusal (with the clipped value) stays one line under 200 characters; --help says the rest.
INSTANT_FORMS = "an ISO-8601 time, now, today or an offset like -7d or -12h"


class Instant(click.ParamType):  # type: ignore[type-arg]
    """A time on the command line: ISO-8601 (UTC without an offset; a date alone is its midnight), ``now``,
    ``today`` (midnight UTC) or an offset from now (``-7d``, ``-12h``, ``-30m``, ``+1h``).

    ``now`` is the command's clock (``State.now``), else ``clock``, else the system's.
    """

    name = "TIME"

    def __init__(self, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.clock = clock

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.datetime:
        if isinstance(value, dt.datetime):
            return value
        text = str(value)
        try:
            parsed = self._read(text.strip(), ctx)
        except OverflowError:  # -99999999d: before the year 1
            self.fail(f"{clipped(text)} is outside the years 1-9999 in UTC", param, ctx)
        if parsed is None:
            self.fail(f"{clipped(text)} is not {INSTANT_FORMS}", param, ctx)
        try:
            # Every UTC time Python holds (years 1-9999) is one that SQLite, PostgreSQL and MariaDB compare.
            return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):  # e.g. 9999-12-31T23:59:59-23:59 is in the year 10000 in UTC
            self.fail(f"{clipped(text)} is outside the years 1-9999 in UTC", param, ctx)

    def _read(self, text: str, ctx: click.Context | None) -> dt.datetime | None:
        """The time ``text`` names, or None when it is none of the forms; OverflowError beyond the years 1-9999."""
        word, offset = text.lower(), OFFSET_RE.fullmatch(text.lower())
        if word in ("now", "today") or offset is not None:
            now = self._now(ctx)
            if word == "now":
                return now
            if word == "today":
                return now.replace(hour=0, minute=0, second=0, microsecond=0)
            assert offset is not None
            seconds = parse_duration(offset.group(2))
            if seconds is None:
                return None
            return now + dt.timedelta(seconds=seconds if offset.group(1) == "+" else -seconds)
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None

    def _now(self, ctx: click.Context | None) -> dt.datetime:
        state = ctx.find_object(State) if ctx is not None else None
        clock = self.clock or (state.now if state is not None else utcnow)
        return clock().astimezone(dt.UTC)


def echo_json(value: Any) -> None:
    """One JSON document on stdout, on one line (it can sit in a JSON-lines log); times as ISO-8601."""
    click.echo(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return repr(value)  # a number no column holds, kept as text (documents.OutOfRange)


result_format_option = click.option(
    "--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True,
    help="table for people; json: one JSON object on stdout, for machines.")

format_option = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                             help="table for people; csv (with a header row) and json for machines.")

application_option = click.option(
    "--application", "chosen", multiple=True, metavar="NAME",
    help="Only this application (repeatable); default: every configured one.")
