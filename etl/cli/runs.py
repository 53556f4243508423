"""Commands that run passes: sync, backfill, daemon, and status to watch them."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import click

from etl.cli.base import State, application_option, cli, echo_json, log, pass_state, result_format_option
from etl.config import IF_LOCKED
from etl.output import render

if TYPE_CHECKING:
    from etl.runloop import RunResult
    from etl.stop import StopRequest


if_locked_option = click.option(
    "--if-locked", type=click.Choice(IF_LOCKED),
    help="When another run holds the lock: fail (exit 4) or skip (exit 0, for schedulers that count any other "
         "exit as a failure). Default: sync.if_locked, else fail.")


INTERRUPTED = 130  # 128 + SIGINT, as shells report an interrupted command

accept_deletions_option = click.option(
    "--accept-deletions", is_flag=True,
    help="Store this run's deletions even when they are more than sync.max_deleted_share of the connections "
         "answered (the mass-deletion guard), once you have checked that they are real.")


def _report(ctx: click.Context, run: Callable[[StopRequest], RunResult], fmt: str, if_locked: str,
            grace: float) -> None:
    """Run, print the outcome (one JSON object for every outcome with --format json) and exit with its code.

    The first SIGINT or SIGTERM stops the run: no new request, those in flight have ``grace`` seconds,
    what was received is stored, and the exit code is 130; a second signal stops it at once.
    """
    from etl.stop import StopRequest, stop_on_signals

    stop = StopRequest()
    with stop_on_signals(stop, grace=grace):
        outcome = _outcome(lambda: run(stop), stop, if_locked, raising=fmt != "json", text=fmt != "json")
    if fmt == "json":
        echo_json(outcome)
    _exit(ctx, outcome)


def _exit(ctx: click.Context, outcome: dict[str, Any]) -> None:
    if outcome["exit_code"] == INTERRUPTED and outcome["run_id"] is None:  # interrupted where it stood
        _leave_now()
    ctx.exit(outcome["exit_code"])


def _outcome(run: Callable[[], RunResult], stop: StopRequest, if_locked: str, *, raising: bool,
             text: bool) -> dict[str, Any]:
    """One run's outcome as a dict, its error on stderr and (``text``) its summary on stdout; with ``raising``,
    an error that is not a skip propagates instead (the command's own error handling prints it)."""
    from etl.errors import EtlError, LockHeld, one_line
    from etl.runloop import outcome_without_result

    try:
        result = run()
    except LockHeld as error:
        code = 0 if if_locked == "skip" else error.exit_code
        if raising and code:
            raise
        click.echo(f"skipped: {error}", err=True)
        return outcome_without_result("skipped", code, str(error))
    except EtlError as error:
        if raising:
            raise
        click.echo(f"Error: {error}", err=True)
        status = "error" if error.exit_code == 2 else "aborted"
        return outcome_without_result(status, error.exit_code, str(error), getattr(error, "run_id", None))
    except KeyboardInterrupt:
        outcome = outcome_without_result("aborted", INTERRUPTED, f"interrupted ({stop.reason or 'SIGINT'}); what "
                                         "was received is stored and the run is recorded as aborted")
        click.echo(f"Error: {outcome['error']}", err=True)
        return outcome
    except Exception as error:
        if raising:
            raise
        log.error("internal error: %s", one_line(error), exc_info=True)
        outcome = outcome_without_result(
            "aborted", 3, f"internal error ({one_line(error)}); the run, if any, is recorded as aborted")
        click.echo(f"Error: {outcome['error']}", err=True)
        return outcome
    outcome = result.as_dict()
    if stop.reason is not None and result.status == "aborted":
        outcome["exit_code"] = INTERRUPTED
    if text:
        click.echo(result.summary())
        if result.hint:
            click.echo(result.hint)
    return outcome


# Which of several applications' exit codes the command exits with: the most severe (4 only when all were locked).
SEVERITY = (INTERRUPTED, 3, 2, 1, 0)


def combined(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Several applications' outcomes as one: ``{"status", "exit_code", "applications": [...]}``."""
    codes = [o["exit_code"] for o in outcomes]
    ran = [code for code in codes if code != 4]
    code = 4 if not ran else next(c for c in SEVERITY if c in ran)
    worst = next((o for o in outcomes if o["exit_code"] == code), outcomes[0])
    return {"status": worst["status"], "exit_code": code, "run_id": None, "applications": outcomes}


def _leave_now() -> None:
    """Exit 130 at once: requests still in flight on the fetch threads are not waited for (they would hold
    the interpreter's exit until their deadline); what was received is stored already."""
    import logging
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(INTERRUPTED)


@cli.command("sync")
@click.option("--strategy", type=click.Choice(("auto", "ids", "list")),
              help="ids: one GET per due tracked connection; list: the full listing, 100 a page; "
                   "auto (default, or sync.strategy): whichever needs fewer requests.")
@click.option("--all", "ignore_due", is_flag=True,
              help="Every tracked connection, due or not (failing and deleted ones included).")
@click.option("--max-duration", metavar="DURATION",
              help="Start no request that cannot finish within DURATION (90s, 15m); what is left stays due for "
                   "the next pass. Default: sync.max_duration, else schedule.interval (or the next cron firing).")
@click.option("--metrics-file", metavar="PATH",
              help="Write Prometheus metrics here after the run (node_exporter textfile collector); "
                   "default: metrics.textfile from the config.")
@accept_deletions_option
@if_locked_option
@application_option
@result_format_option
@click.pass_context
def sync_command(ctx: click.Context, strategy: str | None, ignore_due: bool, max_duration: str | None,
                 metrics_file: str | None, accept_deletions: bool, if_locked: str | None, chosen: tuple[str, ...],
                 fmt: str) -> None:
    """One pass now over the tracked connections that are due; what cron calls.

    A connection is due when it has not been fetched for schedule.interval, or
    when its retry or re-check time has come (failing connections back off;
    deleted ones are re-checked daily). Only one run at a time per application.
    With several applications, each configured one (or each --application) in
    turn, all within one --max-duration.

    Exit 0: every connection fetched and stored, or found deleted; 1: some failed,
    or a guard stopped the pass (mass deletion, outage); 2: bad configuration;
    3: aborted (credentials refused, billing, database down); 4: skipped, another
    run holds the lock (0 with --if-locked skip); 130: interrupted. With several
    applications: the most severe of theirs, and 4 only when every one was locked.

    \b
    Example:
        SMARTCAR_CLIENT_ID=... SMARTCAR_CLIENT_SECRET=... smartcar-etl sync
        smartcar-etl sync --strategy list   # refresh the tracked ones through the listing
        smartcar-etl sync --accept-deletions   # the deletions the guard held back are real
        smartcar-etl sync --application eu-west --application us
        smartcar-etl sync --format json --if-locked skip | jq .status
    """
    from etl.context import Seams
    from etl.errors import LockHeld
    from etl.metrics import Metrics
    from etl.sync import sync

    state: State = ctx.obj
    names = state.applications(chosen)
    config = _with_run_options(state.config, max_duration, accept_deletions)
    textfile = metrics_file or config.metrics.textfile
    metrics = Metrics() if textfile else None
    bar = _Bar("sync") if sys.stderr.isatty() and fmt != "json" and len(names) == 1 else None

    def run(name: str, stop: StopRequest, seconds: float | None) -> RunResult:
        app = config.for_application(name)
        if seconds is not None:
            app = replace(app, sync=replace(app.sync, max_duration_seconds=seconds))
        try:
            return sync(app, state.store().scoped(name), seams=Seams(metrics=metrics, cancelled=stop, progress=bar),
                        ignore_due=ignore_due, strategy=strategy)
        except LockHeld:
            if metrics is not None:
                metrics.of(name).lock_skip()
            raise
        finally:
            if metrics is not None and textfile:
                _write_metrics(metrics, state, textfile)

    if len(names) == 1:
        _report(ctx, lambda stop: run(names[0], stop, None), fmt, if_locked or config.sync.if_locked,
                config.sync.stop_timeout_seconds)
    else:
        _report_applications(ctx, config, names, run, fmt)


def _report_applications(ctx: click.Context, config: Any, names: list[str],
                         run: Callable[[str, StopRequest, float | None], RunResult], fmt: str) -> None:
    """Sync each application in turn, within one ``sync.max_duration`` (``config``'s, with the command's options)
    for them all, each an equal share of what is left; print each outcome (with --format json one object holding
    them all) and exit with the most severe code."""
    from etl.clock import utcnow
    from etl.stop import StopRequest, stop_on_signals
    from etl.sync import default_max_duration

    if_locked = ctx.params.get("if_locked") or config.sync.if_locked
    whole = config.sync.max_duration_seconds or default_max_duration(config, utcnow)
    started = time.monotonic()
    outcomes: list[dict[str, Any]] = []
    stop = StopRequest()
    with stop_on_signals(stop, grace=config.sync.stop_timeout_seconds):
        for index, name in enumerate(names):
            # Each application gets an equal share of what is left, so that one waiting on its rate budget cannot
            # starve those after it; what one leaves unused goes to the rest.
            remaining = whole - (time.monotonic() - started)
            left = max(remaining / (len(names) - index), min(remaining, 1.0))  # a pass takes 1 s at the least
            if stop.is_set() or remaining < 1:
                outcomes.append(_not_started(name, "stopped" if stop.is_set() else "no time left in the pass's "
                                             "max-duration; its due connections stay due"))
                continue
            if fmt != "json":
                click.echo(f"{name}:")
            outcome = _outcome(functools.partial(run, name, stop, left), stop, if_locked, raising=False,
                               text=fmt != "json")
            outcomes.append({**outcome, "application": name})
    whole_outcome = combined(outcomes)
    if fmt == "json":
        echo_json({key: whole_outcome[key] for key in ("status", "exit_code", "applications")})
    _exit(ctx, whole_outcome)


def _not_started(name: str, why: str) -> dict[str, Any]:
    from etl.runloop import outcome_without_result

    click.echo(f"{name}: not started: {why}", err=True)
    return {**outcome_without_result("skipped", 0, why), "application": name}


def _with_run_options(config: Any, max_duration: str | None, accept_deletions: bool) -> Any:
    """The config with ``sync.max_duration`` from ``--max-duration`` (checked as the config key would be), and
    without the mass-deletion guard for ``--accept-deletions``."""
    from dataclasses import replace

    from etl.config import parse_setting

    if max_duration is not None:
        seconds = parse_setting("sync.max_duration", max_duration, where="--max-duration")
        config = replace(config, sync=replace(config.sync, max_duration_seconds=seconds))
    if accept_deletions:
        config = replace(config, sync=replace(config.sync, max_deleted_share=1.0))
    return config


def _write_metrics(metrics: Any, state: State, path: str) -> None:
    """Write the metrics file even after a failed run: that is when it matters most."""
    try:
        for name in state.config.application_names():
            config, store = state.application(name)
            metrics.of(name).load_state(store, config)
        metrics.write_textfile(path)
    except Exception as error:  # never let metrics hide the run's own outcome
        log.warning("could not write metrics to %s: %s", path, error)


class _Bar:
    """A progress bar on stderr (count, rate, time left), for a terminal only."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None
        self._started = time.monotonic()
        self._done = 0

    def start(self, total: int | None) -> None:
        self._bar = click.progressbar(length=max(total or 0, 1), label=self.label, file=sys.stderr,
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
@click.option("--ids-file", metavar="FILE",
              help="Connection ids to fetch, one a line (- for stdin); they become tracked.")
@click.option("--all", "from_listing", is_flag=True, help="Every connection of the full listing.")
@click.option("--resume", is_flag=True, help="Continue the interrupted backfill of the same ids (or listing).")
@click.option("--dry-run", is_flag=True, help="Print what would be fetched and how long the rate limit makes "
              "it take; fetch and write nothing (--all sends one listing request to count).")
@click.option("--max-duration", metavar="DURATION",
              help="Stop starting requests that cannot finish within DURATION; --resume continues later.")
@accept_deletions_option
@if_locked_option
@application_option
@result_format_option
@click.pass_context
def backfill_command(ctx: click.Context, ids_file: str | None, from_listing: bool, resume: bool, dry_run: bool,
                     max_duration: str | None, accept_deletions: bool, if_locked: str | None,
                     chosen: tuple[str, ...], fmt: str) -> None:
    """A large one-off fetch, with a progress bar on a terminal; resumable. The ids it fetches become tracked:
    with --all, every connection of the application.

    Each batch stored is a checkpoint: after an interruption (Ctrl-C, a crash,
    SIGKILL) the same command with --resume fetches only what is left.

    \b
    Example:
        smartcar-etl backfill --all                           # track and fetch every connection
        smartcar-etl backfill --ids-file all-ids.txt --dry-run
        smartcar-etl backfill --ids-file all-ids.txt          # interrupted? then:
        smartcar-etl backfill --ids-file all-ids.txt --resume
        smartcar-etl backfill --all --application eu-west   # with several applications, name one
    """
    from etl.backfill import Source, backfill
    from etl.backfill import dry_run as describe
    from etl.context import Seams
    from etl.tracking import ids_from_file

    if (ids_file is None) == (not from_listing):
        msg = "give exactly one of --ids-file FILE and --all"
        raise click.UsageError(msg)
    state: State = ctx.obj
    (name,) = state.applications(chosen, one="backfill")
    app_config, store = state.application(name)
    config = _with_run_options(app_config, max_duration, accept_deletions)

    def source() -> Source:  # read once the configuration has loaded: a bad id is then one JSON outcome
        if ids_file is None:
            return Source(name="the full listing")
        return Source(name="stdin" if ids_file == "-" else ids_file, ids=ids_from_file(ids_file))

    if dry_run:
        plan = describe(config, store, source(), resume=resume)
        if fmt == "json":
            echo_json(asdict(plan))
        else:
            click.echo(plan.describe())
        return
    progress = _Bar("backfill") if sys.stderr.isatty() and fmt != "json" else None
    _report(ctx, lambda stop: backfill(config, store, source(), resume=resume, progress=progress,
                                       seams=Seams(cancelled=stop)),
            fmt, if_locked or config.sync.if_locked, config.sync.stop_timeout_seconds)


@cli.command("daemon")
@click.option("--interval", metavar="DURATION", help="Run a pass every DURATION (90s, 15m, 1h); "
              "overrides schedule.interval.")
@click.option("--cron", metavar="EXPR", help="Run passes on a crontab schedule (UTC), e.g. '*/15 * * * *'; "
              "overrides schedule.cron.")
@click.pass_context
def daemon_command(ctx: click.Context, interval: str | None, cron: str | None) -> None:
    """Run passes on a schedule until SIGTERM or SIGINT, serving Prometheus metrics.

    Each application on its own schedule, one pass of it at a time; a pass that finds the application's
    lock held (a cron sync) is skipped. Several daemons (on several hosts) pointed at one database share
    the applications: each firing runs in exactly one of them. On SIGTERM the requests in flight finish, what they
    fetched is stored, the run is recorded, and the daemon exits 0 within
    daemon.stop_timeout (default 30s).

    \b
    Example:
        smartcar-etl --log-format json daemon --interval 15m
    """
    from dataclasses import replace

    from etl.config import parse_setting
    from etl.scheduler import Daemon

    state: State = ctx.obj
    config = state.config
    if interval is not None and cron is not None:
        msg = "--interval and --cron exclude each other"
        raise click.UsageError(msg)
    if interval is not None:
        seconds = parse_setting("schedule.interval", interval, where="--interval")
        config = replace(config, schedule=replace(config.schedule, interval_seconds=seconds, cron=None))
    if cron is not None:
        cron = parse_setting("schedule.cron", cron, where="--cron")
        config = replace(config, schedule=replace(config.schedule, cron=cron))
    if interval is not None or cron is not None:  # the option is every application's schedule
        config = replace(config, applications=tuple(replace(entry, interval_seconds=None, cron=None)
                                                    for entry in config.applications))
    ctx.exit(Daemon(config, state.store()).serve())


@cli.command("status")
@result_format_option
@click.option("--json", "as_json", is_flag=True, help="The same as --format json (kept as an alias).")
@click.option("--runs", type=click.IntRange(1, 1000), default=10, show_default=True, help="How many recent runs.")
@click.option("--max-age", metavar="DURATION", help="Exit 1 when a tracked pending or active connection has no "
              "successful fetch within DURATION (15m, 1h), or when nothing is tracked, for monitoring; the output "
              "says how many.")
@application_option
@pass_state
def status_command(state: State, fmt: str, as_json: bool, runs: int, max_age: str | None,
                   chosen: tuple[str, ...]) -> None:
    """Recent runs, how fresh the mirror is, the rate budget, and the connections that are failing; with several
    applications, one report each (and the applications the database holds that are not configured).

    \b
    Example:
        smartcar-etl status --format json | jq '.failing[] | .connection_id'
        smartcar-etl status --max-age 1h || alert "smartcar mirror is stale"
        smartcar-etl status --application eu-west
    """
    from etl.config import parse_setting

    limit = parse_setting("schedule.interval", max_age, where="--max-age") if max_age is not None else None
    names = state.applications(chosen)
    reports = [_status_of(state, name, runs, limit) for name in names]
    store = state.store()
    unconfigured = sorted(set(store.stored_applications()) - set(state.config.application_names()))
    if as_json or fmt == "json":
        echo_json({**reports[0], "unconfigured": unconfigured} if len(reports) == 1
                  else {"applications": reports, "unconfigured": unconfigured})
    else:
        for report in reports:
            if len(reports) > 1:
                click.echo(f"\n== application {report['application']} ==")
            _print_status(report)
        if unconfigured:
            click.echo(f"\nNot configured (kept, not synced): {', '.join(unconfigured)}")
    problems = [r for r in reports if limit is not None and r["stale"]["problem"]]
    for report in problems:
        click.echo(f"stale: {report['application']}: {report['stale']['problem']}", err=True)
    if problems:
        click.get_current_context().exit(1)


def _status_of(state: State, name: str, runs: int, limit: float | None) -> dict[str, Any]:
    """One application's status report."""
    from etl.clock import utcnow
    from etl.status import budget, freshness, stale, status_report

    config, store = state.application(name)
    at = utcnow()
    report = {"application": name, **status_report(store, runs=runs)}
    report["freshness"] = freshness(store, config, at=at)
    report["budget"] = budget(store, config, at=at, tracked=report["freshness"]["tracked"])
    if limit is not None:
        report["stale"] = stale(store, at=at, max_age=limit)
    return report


def _print_status(report: dict[str, Any]) -> None:
    from etl.backfill import human_duration
    from etl.status import FAILING_COLUMNS, RUN_COLUMNS

    counts, fresh, budget = report["connections"], report["freshness"], report["budget"]
    last = report["last_success_at"]
    click.echo(f"Last successful run finished: {last.isoformat() if last else 'never'}\n")
    click.echo("Recent runs:")
    click.echo(render(report["runs"], RUN_COLUMNS))
    click.echo("\nTracked connections: " + ", ".join(f"{counts[s]} {s}" for s in ("pending", "active", "deleted"))
               + f" ({counts['untracked']} untracked)")
    interval = human_duration(fresh["interval_seconds"])
    ages = ", ".join(f"{name} {human_duration(fresh[key]) if fresh[key] is not None else '-'}"
                     for name, key in (("oldest", "oldest_age_seconds"), ("median", "median_age_seconds"),
                                       ("p95", "p95_age_seconds")))
    click.echo(f"Freshness: {fresh['fetched_within_interval']} of {fresh['tracked']} fetched within {interval}, "
               f"{fresh['never_fetched']} never fetched; success age {ages}")
    ids, pages = budget["full_refresh"]["ids"], budget["full_refresh"]["list"]
    click.echo(f"Rate budget: {budget['tokens_now']:g} of {budget['capacity']:g} tokens now, "
               f"{budget['requests_per_hour']:g} requests an hour")
    click.echo(f"  a full refresh of {fresh['tracked']} needs {ids['requests']} GETs = "
               f"{human_duration(ids['seconds'])}, or {pages['requests']} listing requests = "
               f"{human_duration(pages['seconds'])}; "
               f"schedule.interval {interval} {'can' if budget['interval_can_be_met'] else 'cannot'} be met")
    if "stale" in report:
        click.echo(f"Stale: {report['stale']['connections']} connection(s) without a success within "
                   f"{human_duration(report['stale']['max_age_seconds'])}")
    click.echo(f"\nFailing connections ({report['failing_total']}):")
    click.echo(render(report["failing"], FAILING_COLUMNS))
