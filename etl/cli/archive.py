"""Commands on the document archive: archive show (and rebuild, which derives the history from it)."""

from __future__ import annotations

import datetime as dt
import json

import click

from etl.cli.base import EtlGroup, Instant, State, application_option, cli, pass_state


@cli.group(cls=EtlGroup)
def archive() -> None:
    """The documents the API sent, as received (config archive.enabled, on by default).

    \b
    Example:
        smartcar-etl archive show 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b --as-of 2026-03-01
    """


@archive.command("show")
@click.argument("connection_id")
@click.option("--as-of", "as_of", type=Instant(),
              help="The instant (ISO-8601, UTC if no offset; now, today, -7d, -12h); default: latest.")
@click.option("--format", "fmt", type=click.Choice(("json", "table")), default="json", show_default=True,
              help="json: one JSON object on one line; table: the fields one a line, then the document.")
@application_option
@pass_state
def archive_show(state: State, connection_id: str, as_of: dt.datetime | None, fmt: str,
                 chosen: tuple[str, ...]) -> None:
    """Print the connection's document as received at an instant, as JSON, with when it was first and last seen.

    Exit 1 when the archive holds nothing for the connection by then. A 404 shows as status 404 with no
    document; a document that validation refused is shown with "rejected": true.

    \b
    Example:
        smartcar-etl archive show 32c4139a-e4aa-4c6c-b357-3ae9022dbf1b --as-of 2026-03-01T00:00:00Z | jq .document
    """
    from etl.tracking import ids_from_arguments

    [cid] = ids_from_arguments([connection_id])
    store = state.store()
    store.require_migrated()
    chosen = tuple(state.readable(chosen) or ())
    mine = not chosen or store.application_of(cid) in chosen
    found = store.archived(cid, as_of) if mine else None
    if found is None:
        when = f" by {as_of.isoformat()}" if as_of is not None else ""
        of = "" if mine else f" of application {', '.join(chosen)}"
        click.echo(f"the archive holds nothing for connection {cid}{of}{when}", err=True)
        raise click.exceptions.Exit(1)
    shown = found.as_json()
    if fmt == "json":
        # default=repr: a number no column can hold was kept as the text it was read as (documents.OutOfRange)
        click.echo(json.dumps(shown, sort_keys=True, default=repr))  # one line, like every --format json
        return
    document = shown.pop("document")
    for name, value in shown.items():
        click.echo(f"{name}: {'' if value is None else value}")
    click.echo("document:" + ("" if document is None else "\n" + json.dumps(document, indent=2, sort_keys=True,
                                                                          default=repr)))


@cli.command("rebuild")
@click.option("--dry-run", is_flag=True, help="Count what would differ, and change nothing.")
@pass_state
def rebuild_command(state: State, dry_run: bool) -> None:
    """Derive users, vehicles, connections' fields and the whole permission history again from the archive.

    Under the run lock, in one transaction, with the same code as sync; every archived document is
    validated again, so a fix to the parser reaches the past. Refused (exit 2, naming them, nothing changed)
    when some connections have observations the archive does not hold, or when an archived document cannot
    be verified: it does not decompress or parse, is not what its digest was taken of, or is another
    connection's. --dry-run is refused the same way.

    \b
    Example:
        smartcar-etl rebuild --dry-run && smartcar-etl rebuild
    """
    store = state.store()
    store.require_migrated()
    result = store.rebuild(dry_run=dry_run)
    for name in result.removed:
        click.echo(f"{name}: {result.removed[name]:,} rows removed, {result.added[name]:,} added")
    click.echo(f"{result.observations:,} archived observations replayed; "
               f"{result.still_rejected:,} documents still rejected by validation")
    if dry_run:
        click.echo("dry run: nothing was changed" + ("" if result.differs else "; the history is as rebuilt"))
    else:
        click.echo("rebuilt" if result.differs else "rebuilt: nothing differed")
