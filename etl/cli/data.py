"""Commands that set things up: the schema (db) and which connections are tracked."""

from __future__ import annotations

from typing import Any

import click

from etl.cli.base import EtlGroup, State, cli, echo_json, format_option, pass_state, result_format_option
from etl.output import render_chunks


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
@pass_state
def connections_add(state: State, ids: tuple[str, ...]) -> None:
    """Start tracking these connection ids (UUIDs). Nothing is stored if any id is invalid.

    \b
    Example:
        smartcar-etl connections add 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import ids_from_arguments, track

    _report_tracked(track(state.store(), ids_from_arguments(ids)))


@connections.command("import")
@click.argument("file", metavar="FILE")
@pass_state
def connections_import(state: State, file: str) -> None:
    """Track the ids in FILE (- for stdin): one a line, blank lines and # comments ignored.

    Every invalid id is reported with its line number, and then nothing is stored.
    The file is UTF-8 (a byte-order mark is ignored), at most 256 MiB.

    \b
    Example:
        smartcar-etl connections import ids.txt
        psql -Atc 'select connection_id from app.cars' | smartcar-etl connections import -
    """
    from etl.tracking import ids_from_file, track

    _report_tracked(track(state.store(), ids_from_file(file)))


@connections.command("list")
@click.option("--all", "include_untracked", is_flag=True, help="Include untracked connections.")
@format_option
@pass_state
def connections_list(state: State, include_untracked: bool, fmt: str) -> None:
    """Tracked connections with status, open permissions, last success and last error.

    \b
    Example:
        smartcar-etl connections list --format csv > connections.csv
    """
    from etl.tracking import LIST_COLUMNS, list_connections

    for chunk in render_chunks(list_connections(state.store(), include_untracked=include_untracked), LIST_COLUMNS,
                               fmt):
        click.echo(chunk, nl=False)


@connections.command("untrack")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@pass_state
def connections_untrack(state: State, ids: tuple[str, ...]) -> None:
    """Stop polling these ids; their rows and history stay.

    \b
    Example:
        smartcar-etl connections untrack 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b
    """
    from etl.tracking import ids_from_arguments, untrack

    changed, unknown = untrack(state.store(), ids_from_arguments(ids))
    for connection_id in unknown:
        click.echo(f"Warning: {connection_id} is not a known connection", err=True)
    click.echo(f"{changed} untracked")


