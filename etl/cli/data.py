"""Commands that set things up: the schema (db) and which connections are tracked."""

from __future__ import annotations

from typing import Any

import click

from etl.cli.base import (
    EtlGroup,
    State,
    application_option,
    cli,
    echo_json,
    format_option,
    pass_state,
    result_format_option,
)
from etl.output import render, render_chunks


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
        SMARTCAR_ETL_DATABASE_URL=mariadb://etl:secret@db/etl smartcar-etl db upgrade
    """
    from etl.db.engine import safe_url

    before, after = state.store(create=True).upgrade()
    where = safe_url(state.config.database_url)
    if before == after:
        click.echo(f"{where}: already at revision {after}")
    else:
        click.echo(f"{where}: upgraded from {before or 'empty'} to {after}")


@db.command("current")
@result_format_option
@pass_state
def db_current(state: State, fmt: str) -> None:
    """Print the database's migration revision (and whether it is the latest).

    \b
    Example:
        smartcar-etl db current
        smartcar-etl db current --format json | jq .latest
    """
    from etl.db.engine import head_revision

    current, head = state.store().current_revision(), head_revision()
    if fmt == "json":
        echo_json({"current": current, "head": head, "latest": current == head})
    elif current is None:
        click.echo(f"none (empty database; latest is {head})")
    else:
        click.echo(f"{current}" + (" (latest)" if current == head else f" (latest is {head})"))


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
@application_option
@pass_state
def connections_add(state: State, ids: tuple[str, ...], chosen: tuple[str, ...]) -> None:
    """Start tracking these connection ids (UUIDs). Nothing is stored if any id is invalid, or belongs to
    another application. With several applications configured, --application names the one they belong to.

    \b
    Example:
        smartcar-etl connections add 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
        smartcar-etl connections add --application eu-west 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import ids_from_arguments, track

    (name,) = state.applications(chosen, one="connections add")
    _report_tracked(track(state.store().scoped(name), ids_from_arguments(ids)))


@connections.command("import")
@click.argument("file", metavar="FILE")
@application_option
@pass_state
def connections_import(state: State, file: str, chosen: tuple[str, ...]) -> None:
    """Track the ids in FILE (- for stdin): one a line, blank lines and # comments ignored.

    Every invalid id is reported with its line number, and then nothing is stored.
    The file is UTF-8 (a byte-order mark is ignored), at most 256 MiB.

    \b
    Example:
        smartcar-etl connections import ids.txt
        psql -Atc 'select connection_id from app.cars' | smartcar-etl connections import -
        smartcar-etl connections import --application eu-west eu-ids.txt
    """
    from etl.tracking import ids_from_file, track

    (name,) = state.applications(chosen, one="connections import")
    _report_tracked(track(state.store().scoped(name), ids_from_file(file)))


@connections.command("list")
@click.option("--all", "include_untracked", is_flag=True, help="Include untracked connections.")
@application_option
@format_option
@pass_state
def connections_list(state: State, include_untracked: bool, chosen: tuple[str, ...], fmt: str) -> None:
    """Tracked connections with status, open permissions, last success and last error.

    \b
    Example:
        smartcar-etl connections list --format csv > connections.csv
    """
    from etl.tracking import LIST_COLUMNS, list_connections

    store, chosen = state.store(), tuple(state.readable(chosen) or ())
    rows = list_connections(store.scoped(chosen[0]) if len(chosen) == 1 else store, include_untracked=include_untracked)
    if len(chosen) > 1:
        rows = (row for row in rows if row["application"] in chosen)
    for chunk in render_chunks(rows, LIST_COLUMNS, fmt):
        click.echo(chunk, nl=False)


@connections.command("untrack")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@application_option
@pass_state
def connections_untrack(state: State, ids: tuple[str, ...], chosen: tuple[str, ...]) -> None:
    """Stop polling these ids; their rows and history stay.

    \b
    Example:
        smartcar-etl connections untrack 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import ids_from_arguments, untrack

    store, chosen = state.store(), tuple(state.readable(chosen) or ())
    changed, unknown = untrack(store.scoped(chosen[0]) if len(chosen) == 1 else store, ids_from_arguments(ids))
    for connection_id in unknown:
        where = f" of application {chosen[0]}" if len(chosen) == 1 else ""
        click.echo(f"Warning: {connection_id} is not a known connection{where}", err=True)
    click.echo(f"{changed} untracked")


@connections.command("move")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--application", "target", required=True, metavar="NAME",
              help="The configured application they belong to.")
@pass_state
def connections_move(state: State, ids: tuple[str, ...], target: str) -> None:
    """Move connections tracked under the wrong application to the one they belong to (another
    application's token gets a genuine 404 for them). Their rows and history stay as they are.

    \b
    Example:
        smartcar-etl connections move 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b --application eu-west
    """
    from etl.tracking import ids_from_arguments

    (name,) = state.applications((target,))
    store = state.store().scoped(name)
    store.require_migrated()
    with store.every_lock():  # no pass of the application they come from sends its token for them meanwhile
        moved, unknown = store.move(ids_from_arguments(ids))
    for connection_id in unknown:
        click.echo(f"Warning: {connection_id} is not a known connection", err=True)
    click.echo(f"{moved} moved to {name}")


@cli.group(cls=EtlGroup)
def applications() -> None:
    """The Smartcar applications of the database and of the configuration.

    \b
    Example:
        smartcar-etl applications list
        smartcar-etl applications rename default eu-west
    """


@applications.command("list")
@format_option
@pass_state
def applications_list(state: State, fmt: str) -> None:
    """Each application the configuration names or the database holds connections of, whether it is
    configured, and how many connections it has.

    \b
    Example:
        smartcar-etl applications list --format json
    """
    store = state.store()
    store.require_migrated()
    stored = store.stored_applications()
    configured = state.config.application_names()
    rows = [{"application": name, "configured": name in configured, "connections": stored.get(name, 0)}
            for name in [*configured, *sorted(set(stored) - set(configured))]]
    click.echo(render(rows, ("application", "configured", "connections"), fmt))


@applications.command("rename")
@click.argument("old", metavar="OLD")
@click.argument("new", metavar="NEW")
@pass_state
def applications_rename(state: State, old: str, new: str) -> None:
    """Give every row of application OLD (connections, runs, backfills, rate budget) to NEW: after an
    application was renamed in the configuration, or `api.application` was set on an existing database.
    History stays as it is. NEW must be configured, OLD no longer (and held by the database).

    \b
    Example:
        smartcar-etl applications rename default eu-west
    """
    from etl.config.parsers import application_name
    from etl.errors import ConfigError

    errors: list[str] = []
    application_name("OLD", old, errors)
    if errors:
        raise ConfigError(errors)
    (name,) = state.applications((new,))
    if name == old:  # both run locks are taken: the same one twice would be refused as held by another run
        msg = f"{old} is its name already: NEW must differ from OLD"
        raise click.BadParameter(msg, param_hint="NEW")
    if old in state.config.application_names():  # two live applications would be merged: its token 404s theirs
        msg = (f"{old} is still configured: rename it in the configuration first (its connections answer only to "
               f"its own credentials)")
        raise click.BadParameter(msg, param_hint="OLD")
    store = state.store()
    store.require_migrated()
    if old not in store.stored_applications():
        msg = f"the database holds no connection of {old}"
        raise click.BadParameter(msg, param_hint="OLD")
    moved = store.rename_application(old, name)
    click.echo(f"{moved} connection(s) of {old} now belong to {name}")
