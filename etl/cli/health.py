"""Commands that say whether the job is set up right: config show and doctor."""

from __future__ import annotations

import click

from etl.cli.base import EtlGroup, State, cli, echo_json, pass_state, result_format_option
from etl.output import render

SETTINGS_COLUMNS = ("key", "value", "source", "origin")
CHECK_COLUMNS = ("check", "status", "detail")


@cli.group("config", cls=EtlGroup)
def config_group() -> None:
    """The configuration: defaults, the YAML file, SMARTCAR_ETL_* variables and options, in rising precedence.

    \b
    Example:
        SMARTCAR_ETL_API_CONCURRENCY=4 smartcar-etl config show
    """


@config_group.command("show")
@result_format_option
@pass_state
def config_show(state: State, fmt: str) -> None:
    """Print the effective configuration, and where each value came from (default, file, environment, option).

    Secrets are shown only as set or unset; database URLs without their password. Durations are shown as
    they are written (15m, 90s, 1h, 1d); with --format json, as numbers of seconds.

    \b
    Example:
        smartcar-etl config show
        smartcar-etl config show --format json | jq '.settings["rate_limit.per_minute"]'
    """
    from etl.config import effective_settings, setting_text
    from etl.db.engine import safe_url

    config = state.config
    rows = effective_settings(config)
    for row in rows:
        if row["key"] == "database.url":
            row["value"] = safe_url(row["value"])
    if fmt == "json":
        echo_json({"config_file": None if config.source == "built-in defaults" else config.source,
                   "settings": {row["key"]: {k: row[k] for k in SETTINGS_COLUMNS[1:]} for row in rows}})
        return
    click.echo(f"config file: {config.source}")
    click.echo(render(({**row, "value": setting_text(row["key"], row["value"])} for row in rows), SETTINGS_COLUMNS))


@cli.command("doctor")
@result_format_option
@click.pass_context
def doctor_command(ctx: click.Context, fmt: str) -> None:
    """Check that a run can work: configuration, database, token, one API request, clock and rate budget.

    One line each: ok, or what is wrong and how to fix it. Every check runs even after one fails.
    Exit 0 when all pass (a skewed clock or an empty budget is only a warning); 2 for configuration
    (a database not migrated included); 3 when credentials are refused or the database or the API
    cannot be reached. Sends one API request (a listing page of one), from the rate budget.

    \b
    Example:
        smartcar-etl doctor && smartcar-etl sync
        smartcar-etl doctor --format json | jq '.checks[] | select(.status != "ok")'
    """
    from etl.doctor import diagnose

    state: State = ctx.obj
    report = diagnose(lambda: state.config, state.store)
    if fmt == "json":
        echo_json(report.as_dict())
    else:
        click.echo(render(({"check": c.name, "status": c.status, "detail": c.detail} for c in report.checks),
                          CHECK_COLUMNS))
    ctx.exit(report.exit_code)
