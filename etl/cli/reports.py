"""Commands that read the history: report permissions|changes|fleet|html, and check."""

from __future__ import annotations

import datetime as dt

import click

from etl.cli.base import (
    EtlGroup,
    Instant,
    State,
    application_option,
    cli,
    echo_json,
    format_option,
    pass_state,
    result_format_option,
)
from etl.output import render

DEFAULT_HTML_WINDOW = dt.timedelta(days=90)  # report html without --since: the last 90 days


@cli.group(cls=EtlGroup)
def report() -> None:
    """Canned reports on the stored history; --format table|csv|json.

    \b
    Example:
        smartcar-etl report permissions --as-of 2026-03-01 --permission read_location
    """


@report.command("permissions")
@click.option("--as-of", "as_of", type=Instant(), required=True,
              help="The instant (ISO-8601, UTC if no offset; now, today, -7d, -12h).")
@click.option("--permission", help="Only this permission, e.g. read_location.")
@application_option
@format_option
@pass_state
def report_permissions(state: State, as_of: dt.datetime, permission: str | None, chosen: tuple[str, ...],
                       fmt: str) -> None:
    """Which connections held which permissions at an instant; with known false and no permission, each
    connection that existed then (by the API's createdAt) but was first observed later. The table ends with
    a line saying from when the mirror knows the history.

    \b
    Example:
        smartcar-etl report permissions --as-of 2026-03-01T00:00:00Z --format csv
    """
    from etl.reports import PERMISSIONS_COLUMNS, coverage_note, permissions_at

    engine, applications = state.store().engine, state.readable(chosen)
    rows = permissions_at(engine, as_of, permission=permission, applications=applications)
    click.echo(render(rows, PERMISSIONS_COLUMNS, fmt))
    if fmt == "table":  # JSON and CSV carry the known column; the line is for people
        click.echo(coverage_note(engine, as_of, applications=applications))


@report.command("changes")
@click.option("--since", type=Instant(), required=True,
              help="From this instant (included): ISO-8601, now, today, -7d, -12h.")
@click.option("--until", type=Instant(), help="Up to this instant (excluded); default: now.")
@click.option("--permission", help="Only this permission, e.g. read_location.")
@application_option
@format_option
@pass_state
def report_changes(state: State, since: dt.datetime, until: dt.datetime | None, permission: str | None,
                   chosen: tuple[str, ...], fmt: str) -> None:
    """Grants and revocations observed in a window, oldest first.

    \b
    Example:
        smartcar-etl report changes --since 2026-03-02 --until 2026-03-09 --permission read_location
    """
    from etl.reports import CHANGES_COLUMNS, changes_between

    if until is not None and until <= since:
        msg = "--until must be later than --since"
        raise click.BadParameter(msg, param_hint="--until")
    rows = changes_between(state.store().engine, since, until, permission=permission,
                           applications=state.readable(chosen))
    click.echo(render(rows, CHANGES_COLUMNS, fmt))


@report.command("fleet")
@application_option
@format_option
@pass_state
def report_fleet(state: State, chosen: tuple[str, ...], fmt: str) -> None:
    """Connections by make, powertrain, mode and status.

    \b
    Example:
        smartcar-etl report fleet --format json
    """
    from etl.reports import FLEET_COLUMNS, fleet

    click.echo(render(fleet(state.store().engine, applications=state.readable(chosen)), FLEET_COLUMNS, fmt))


@report.command("html")
@click.option("--output", "-o", required=True, metavar="FILE", help="The page to write (replaced whole).")
@click.option("--since", type=Instant(),
              help="From this instant: ISO-8601, today, -30d; default: 90 days before --until.")
@click.option("--until", type=Instant(), help="Up to this instant; default: now.")
@click.option("--bucket", type=click.Choice(["day", "week"]), default="day", show_default=True,
              help="Count changes per UTC day or week (weeks start on Monday).")
@application_option
@pass_state
def report_html(state: State, output: str, since: dt.datetime | None, until: dt.datetime | None, bucket: str,
                chosen: tuple[str, ...]) -> None:
    """One self-contained HTML page: the connections holding each permission over time, changes per day or
    week by kind, the fleet by make and powertrain, each with its table, and the coverage line. Needs the
    extra: pip install 'smartcar-etl[html]'.

    \b
    Example:
        smartcar-etl report html --output report.html --since -30d --bucket week
    """
    from etl.report_html import write_report
    from etl.reports import Window

    until = until or state.now()
    window = Window(since=since or until - DEFAULT_HTML_WINDOW, until=until, period=bucket)
    figures = write_report(state.store().engine, output, window, applications=state.readable(chosen),
                           now=state.now)
    click.echo(f"wrote {output}: {len(figures.held)} permission(s), {window.periods} {bucket}(s)")


@cli.command("check")
@result_format_option
@click.pass_context
def check_command(ctx: click.Context, fmt: str) -> None:
    """Verify the history invariants on the whole database; exit 1 naming each violation.

    \b
    Example:
        smartcar-etl check || alert "smartcar-etl history is inconsistent"
        smartcar-etl check --format json | jq '.violations[]'
    """
    from etl.check import check_history

    state: State = ctx.obj
    result = check_history(state.store().engine)
    if fmt == "json":
        echo_json({"ok": result.ok, "grants": result.grants, "changes": result.changes,
                   "violations": result.violations})
        ctx.exit(0 if result.ok else 1)
    for violation in result.violations:
        click.echo(violation)
    if result.ok:
        click.echo(f"history is consistent: {result.grants} grant intervals and {result.changes} changes checked")
    else:
        click.echo(f"{len(result.violations)} violation(s) found", err=True)
        ctx.exit(1)
