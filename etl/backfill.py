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

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from sqlalchemy import Connection, Engine, insert, select, update

from etl.api.client import utcnow
from etl.api.ratelimit import TokenBucket
from etl.cadence import Cadence
from etl.config import Config
from etl.db.engine import require_migrated, translate_errors
from etl.db.models import backfills, connections
from etl.errors import ConfigError
from etl.fetch import PassState, fetch_outcomes, listing_outcomes
from etl.metrics import Metrics
from etl.store import BatchCounts, Outcome
from etl.sync import RunResult, build_client, known_connections, locked_pass, run_outcomes, start_run
from etl.tracking import CHUNK, track

log = logging.getLogger(__name__)
LISTING = "listing"


class Progress(Protocol):
    """What a progress display needs: a start with the expected total, steps, an end."""

    def start(self, total: int | None) -> None: ...

    def advance(self, count: int, total: int | None = None) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Source:
    """What to backfill: the ids of a file, or (``ids`` None) the full listing."""

    name: str
    ids: Sequence[str] | None = None

    @property
    def kind(self) -> str:
        return "all" if self.ids is None else "ids"

    @property
    def fingerprint(self) -> str:
        if self.ids is None:
            return LISTING
        return hashlib.sha256("\n".join(sorted(self.ids)).encode()).hexdigest()


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


def _interrupted(conn: Connection, source: Source, *, required: bool = False) -> Any:
    """The newest unfinished backfill of ``source`` (ConfigError if ``required`` and there is none)."""
    row = conn.execute(
        select(backfills).where(backfills.c.kind == source.kind, backfills.c.fingerprint == source.fingerprint,
                                backfills.c.status == "running")
        .order_by(backfills.c.id.desc()).limit(1)
    ).first()
    if required and row is None:
        msg = f"--resume: no interrupted backfill of {source.name} to resume"
        raise ConfigError(msg)
    return row


def _remaining(conn: Connection, ids: Sequence[str], since: dt.datetime | None) -> list[str]:
    """The ids not attempted since ``since`` (all of them when ``since`` is None), in file order."""
    if since is None:
        return list(ids)
    done: set[str] = set()
    for start in range(0, len(ids), CHUNK):
        done.update(conn.scalars(select(connections.c.id).where(
            connections.c.id.in_(ids[start:start + CHUNK]), connections.c.last_attempt_at >= since)))
    return [i for i in ids if i not in done]


def dry_run(
    config: Config, engine: Engine, source: Source, *, resume: bool,
    transport: httpx.BaseTransport | None = None,
) -> DryRun:
    """What ``backfill`` would fetch and how many requests it would take; nothing is written."""
    require_migrated(engine)
    with translate_errors(engine), engine.connect() as conn:
        row = _interrupted(conn, source, required=True) if resume else None
        if source.ids is not None:
            remaining = _remaining(conn, source.ids, row.started_at if row else None)
            return DryRun(source=source.name, connections=len(remaining), requests=len(remaining),
                          seconds=seconds_at_rate(config, len(remaining)), resuming=row is not None,
                          sample=remaining[:10])
    client = build_client(config, transport=transport)
    try:
        first = client.list_page(1, config.sync.page_size)  # one request, for totalCount
    finally:
        client.http.close()
    count = first.total_count if first.total_count is not None else max(known_connections(engine), len(first.ids))
    start = (row.next_page or 1) if row else 1
    pages = max(1, -(-count // config.sync.page_size) - (start - 1))
    note = "listing pages only; each tracked connection the listing misses costs one more"
    return DryRun(source=source.name, connections=count, requests=pages, seconds=seconds_at_rate(config, pages),
                  resuming=row is not None, note=note)


def backfill(
    config: Config,
    engine: Engine,
    source: Source,
    *,
    resume: bool = False,
    progress: Progress | None = None,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    cancelled: threading.Event | None = None,
    metrics: Metrics | None = None,
    limiter: TokenBucket | None = None,
) -> RunResult:
    """Run (or with ``resume``, continue) a backfill; the library behind ``smartcar-etl backfill``."""
    require_migrated(engine)
    client = build_client(config, transport=transport, sleep=sleep, now=now, cancelled=cancelled, metrics=metrics,
                          limiter=limiter)
    with locked_pass(engine, client, now=now):
        if source.ids is not None:
            track(engine, list(source.ids), now=now)
        backfill_id, started_at, next_page = _open(engine, source, resume=resume, now=now)
        state = PassState(strategy="list" if source.ids is None else "ids")
        window = config.sync.batch_size + config.api.concurrency
        outcomes: Generator[Outcome, None, None]
        if source.ids is None:
            estimate = known_connections(engine) or None
            outcomes = listing_outcomes(
                engine, client=client, page_size=config.sync.page_size, concurrency=config.api.concurrency,
                window=window, state=state, start_page=next_page, since=started_at,
                track_new=config.sync.track_listed, now=now)
        else:
            with translate_errors(engine), engine.connect() as conn:
                remaining = _remaining(conn, source.ids, started_at if resume else None)
            state.planned = estimate = len(remaining)
            outcomes = fetch_outcomes(remaining, client=client, concurrency=config.api.concurrency,
                                      window=window, now=now)
        run_id = start_run(engine, trigger="backfill", planned=state.planned or 0, now=now)
        log.info("run %s: backfill %d of %s%s", run_id, backfill_id, source.name,
                 f", resuming at page {next_page}" if next_page > 1 else "",
                 extra={"run_id": run_id, "backfill_id": backfill_id})

        def checkpoint(conn: Connection, _counts: BatchCounts) -> None:
            conn.execute(update(backfills).where(backfills.c.id == backfill_id)
                         .values(last_run_id=run_id, next_page=state.page or None))

        if progress is not None:
            progress.start(estimate)
        try:
            result = run_outcomes(
                engine, outcomes, run_id=run_id, client=client, state=state, batch_size=config.sync.batch_size,
                cadence=Cadence.from_config(config.schedule), metrics=metrics, now=now, on_batch=checkpoint,
                progress=(lambda n: progress.advance(n, state.total)) if progress is not None else None)
        finally:
            if progress is not None:
                progress.finish()
        if result.status in ("succeeded", "partial", "failed") and not state.incomplete:
            with translate_errors(engine), engine.begin() as conn:
                conn.execute(update(backfills).where(backfills.c.id == backfill_id)
                             .values(status="done", finished_at=now(), last_run_id=run_id))
        else:
            log.warning("backfill %d is not complete; `smartcar-etl backfill ... --resume` continues it",
                        backfill_id)
        return result


def _open(engine: Engine, source: Source, *, resume: bool, now: Callable[[], dt.datetime]
          ) -> tuple[int, dt.datetime, int]:
    """The backfill to run: the interrupted one with ``resume``, else a new one. (id, started_at, next page)."""
    with translate_errors(engine), engine.begin() as conn:
        row = _interrupted(conn, source, required=resume)
        if resume:
            return int(row.id), row.started_at, row.next_page or 1
        if row is not None:
            log.warning("an interrupted backfill of %s (started %s) is set aside; --resume would have continued it",
                        source.name, row.started_at)
            conn.execute(update(backfills).where(backfills.c.id == row.id).values(status="abandoned"))
        started_at = now()
        new_id = conn.execute(insert(backfills).values(
            kind=source.kind, source=source.name, fingerprint=source.fingerprint,
            total=len(source.ids) if source.ids is not None else None, started_at=started_at, status="running",
        ).returning(backfills.c.id)).scalar_one()
        return int(new_id), started_at, 1

