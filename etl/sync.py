"""The one orchestration: plan -> fetch (concurrently) -> parse -> store (in batches) -> run record.

``sync`` builds a ``Pass``, takes the run lock, picks a source (``etl.fetch``)
and hands it to ``RunLoop`` (``etl.runloop``), the loop that stores outcomes in
batches and records how the run ended. ``backfill`` uses the same loop.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from etl.cadence import EARLY
from etl.config import Config
from etl.context import Pass, Seams
from etl.db.store import Store
from etl.fetch import ByIds, Cheapest, ResumableListing
from etl.runloop import RunLoop, RunResult, progress_shown

__all__ = ["RunResult", "default_max_duration", "idle_hint", "sync"]
log = logging.getLogger(__name__)


def default_max_duration(config: Config, now: Callable[[], dt.datetime]) -> float:
    """How long a pass may take by default: ``schedule.interval``, or the time to the next ``schedule.cron`` firing."""
    if config.schedule.cron:
        from apscheduler.triggers.cron import CronTrigger

        at = now()
        trigger = CronTrigger.from_crontab(config.schedule.cron, timezone=dt.UTC)
        fire = trigger.get_next_fire_time(None, at)
        if fire is not None:
            return max(1.0, float((fire - at).total_seconds()))
    return config.schedule.interval_seconds


def sync(
    config: Config,
    store: Store,
    *,
    seams: Seams = Seams(),  # noqa: B008 - frozen, immutable
    ignore_due: bool = False,
    strategy: str | None = None,
    trigger: str = "sync",
) -> RunResult:
    """One pass; the library behind ``smartcar-etl sync``.

    ``strategy`` (default: the config's, ``auto``): ``ids`` fetches the tracked
    connections that are due (every tracked one with ``ignore_due``) one by one;
    ``list`` reads the full listing; ``auto`` picks whichever needs fewer
    requests. Takes the database's run lock (LockHeld, exit 4, if another run
    has it) and closes runs left ``running`` by processes that died.
    """
    strategy = strategy or config.sync.strategy
    max_duration = config.sync.max_duration_seconds or default_max_duration(config, seams.now)
    with Pass.open(config, store, seams, max_duration=max_duration).locked() as ctx:
        store, at = ctx.store, ctx.now()
        due = [] if strategy == "list" else \
            store.due_ids(at=at, ignore_due=ignore_due, fetched_before=at - ctx.cadence.interval * (1 - EARLY))
        source: ByIds | ResumableListing | Cheapest = ResumableListing(ctx) if strategy == "list" \
            else ByIds(ctx, due) if strategy == "ids" else Cheapest(ctx, due)
        run_id, started_at = store.start_run(trigger=trigger, planned=len(due), at=ctx.now())
        log.info("run %s: %d connection(s) due, strategy %s", run_id, len(due), strategy,
                 extra={"run_id": run_id, "strategy": strategy})
        checkpoint = None if isinstance(source, ByIds) else source.checkpoint
        with progress_shown(seams.progress, source, source.planned) as step:
            loop = RunLoop(ctx, source, run_id, started_at, checkpoint=checkpoint, progress=step)
            if not due and strategy != "list":
                loop.result.hint = idle_hint(store, at=ctx.now(), interval=ctx.cadence.interval * (1 - EARLY))
            return loop()


def idle_hint(store: Store, *, at: dt.datetime, interval: dt.timedelta) -> str:
    """What to do when nothing was due: track something, or wait for (or force) the next due connection."""
    from etl.backfill import human_duration

    tracked, next_due = store.tracked_and_next_due(fetched_within=interval)
    if not tracked:
        return ("nothing is tracked: add connection ids with `smartcar-etl connections add ID...` or "
                "`connections import FILE`, or track every connection of the application with "
                "`smartcar-etl backfill --all`")
    when = ""
    if next_due is not None:
        wait = human_duration(max(0.0, (next_due - at).total_seconds()))
        when = f"; the next is due at {next_due.isoformat(timespec='seconds')} (in {wait})"
    return f"none of the {tracked} tracked connection(s) is due{when}; `smartcar-etl sync --all` fetches them now"
