"""Backfill: a large one-off fetch (ids from a file, or the full listing) that can resume.

Its runs are ``sync_runs`` rows with trigger ``backfill`` and it takes the same
run lock as ``sync``. The checkpoint is a ``backfills`` row, written in the same
transaction as each stored batch:

- ids from a file: the ids not attempted since the backfill started are what
  remains (every stored outcome sets ``connections.last_attempt_at``), so a
  resumed backfill fetches exactly those;
- the full listing: ``next_page`` is the page being read when the last batch was
  stored; a resumed backfill reads on from there, then confirms the tracked
  connections that no part of it saw.

Storing is idempotent, so what was fetched twice around an interruption is
stored once, and an interrupted backfill that resumes ends with the same
database as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from etl.api.listing import pages_for
from etl.config import Config
from etl.context import Pass, Progress, Seams, build_client, of_application
from etl.db.store import Store
from etl.fetch import ByIds, Listing, OutcomeSource
from etl.runloop import RunLoop, RunResult, progress_shown
from etl.tracking import track

log = logging.getLogger(__name__)
LISTING = "listing"


@dataclass(frozen=True)
class Source:
    """What to backfill: the ids of a file, or (``ids`` None) the full listing."""

    name: str
    ids: Sequence[str] | None = None

    @property
    def kind(self) -> str:
        """``all`` for the listing, ``ids`` for a file of ids."""
        return "all" if self.ids is None else "ids"

    @property
    def fingerprint(self) -> str:
        """What tells this backfill from another: a hash of the sorted ids, or ``listing``."""
        if self.ids is None:
            return LISTING
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()

    @property
    def total(self) -> int | None:
        """How many ids, for a file of ids."""
        return len(self.ids) if self.ids is not None else None


@dataclass
class DryRun:
    """What a backfill would do, without doing it."""

    source: str
    connections: int
    requests: int
    seconds: float
    resuming: bool
    sample: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self) -> str:
        """Several lines for humans."""
        what = "resume the backfill of" if self.resuming else "backfill"
        lines = [f"Would {what} {self.source}: {self.connections} connection(s), "
                 f"about {self.requests} request(s)."]
        lines.append(f"At the configured rate limit that takes about {human_duration(self.seconds)}"
                     + (f" ({self.note})." if self.note else "."))
        if self.sample:
            more = self.connections - len(self.sample)
            lines.append("First ids: " + ", ".join(self.sample) + (f" and {more} more" if more > 0 else ""))
        return "\n".join(lines)


def human_duration(seconds: float) -> str:
    """``3h 20m``, ``4m 10s``, ``12s``."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes and not days else []
    parts += [f"{secs}s"] if secs and not (days or hours) else []
    return " ".join(parts) or "0s"


def seconds_at_rate(config: Config, requests: int) -> float:
    """How long ``requests`` take under the rate limit, starting with a full bucket."""
    capacity, per_second = config.rate_limit.capacity, config.rate_limit.per_minute / 60
    return max(0, requests - capacity) / per_second


def dry_run(
    config: Config, store: Store, source: Source, *, resume: bool,
    seams: Seams = Seams(),  # noqa: B008 - frozen, immutable
) -> DryRun:
    """What ``backfill`` would fetch and how many requests it would take; nothing is written."""
    store = of_application(store, config)
    store.require_migrated()
    row = store.interrupted_backfill(source) if resume else None
    if source.ids is not None:
        remaining = store.not_attempted_since(source.ids, row.started_at if row else None)
        return DryRun(source=source.name, connections=len(remaining), requests=len(remaining),
                      seconds=seconds_at_rate(config, len(remaining)), resuming=row is not None,
                      sample=remaining[:10])
    client = build_client(config, seams)
    try:
        first = client.list_page(1, config.sync.page_size)  # one request, for totalCount
    finally:
        client.http.close()
    count = first.total_count if first.total_count is not None else max(store.known_connections(), len(first.ids))
    start = row.next_page if row else 1
    pages = max(1, pages_for(count, config.sync.page_size) - (start - 1))
    note = "listing pages only; each tracked connection the listing misses costs one more"
    return DryRun(source=source.name, connections=count, requests=pages, seconds=seconds_at_rate(config, pages),
                  resuming=row is not None, note=note)


def backfill(
    config: Config,
    store: Store,
    source: Source,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    seams: Seams = Seams(),  # noqa: B008 - frozen, immutable
) -> RunResult:
    """Run (or with ``resume``, continue) a backfill; the library behind ``smartcar-etl backfill``.

    With ``sync.max_duration`` (``--max-duration``) it stops starting requests that cannot finish in
    time, so it never holds the run lock longer than asked; ``resume`` continues it.
    """
    with Pass.open(config, store, seams, max_duration=config.sync.max_duration_seconds).locked() as ctx:
        store = ctx.store  # the application's
        if source.ids is not None:
            track(store, list(source.ids), now=ctx.now)
        opened = store.open_backfill(source, resume=resume, at=ctx.now())
        if opened.set_aside is not None:
            log.warning("an interrupted backfill of %s (started %s) is set aside; --resume would have continued it",
                        source.name, opened.set_aside)
        outcomes: OutcomeSource
        page: Callable[[], int | None] = lambda: None  # noqa: E731 - the page to resume at, for the checkpoint
        if source.ids is None:
            listing = Listing(ctx, start_page=opened.next_page, since=opened.started_at, track_new=True)
            outcomes, estimate, page = listing, store.known_connections() or None, lambda: listing.page or None
        else:
            remaining = store.not_attempted_since(source.ids, opened.started_at if resume else None)
            outcomes, estimate = ByIds(ctx, remaining), len(remaining)
        run_id, started_at = store.start_run(trigger="backfill", planned=outcomes.planned or 0, at=ctx.now())
        log.info("run %s: backfill %d of %s%s", run_id, opened.id, source.name,
                 f", resuming at page {opened.next_page}" if opened.next_page > 1 else "",
                 extra={"run_id": run_id, "backfill_id": opened.id})
        with progress_shown(progress, outcomes, estimate) as step:
            result = RunLoop(ctx, outcomes, run_id, started_at, checkpoint=lambda: (opened.id, page()),
                             progress=step)()
        if result.status in ("succeeded", "partial", "failed") and not outcomes.incomplete and not result.deferred:
            store.finish_backfill(opened.id, at=ctx.now(), run_id=run_id)
        else:
            log.warning("backfill %d is not complete; `smartcar-etl backfill ... --resume` continues it", opened.id)
        return result

