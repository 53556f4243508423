"""The one orchestration: plan -> fetch (concurrently) -> parse -> store (in batches) -> run record."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from etl.api.auth import token_source
from etl.api.client import Cancelled, ListingPage, SmartcarClient, make_http_client, utcnow
from etl.api.ratelimit import TokenBucket, shared_bucket
from etl.api.retry import RetryPolicy
from etl.cadence import Cadence
from etl.config import Config
from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, sync_runs
from etl.errors import DatabaseError, FatalApiError, SyncAborted, one_line
from etl.fetch import PassState, fetch_outcomes, listing_outcomes
from etl.lock import run_lock
from etl.metrics import Metrics
from etl.store import DEFAULT_CADENCE, BatchCounts, BatchWriter, Failed, Outcome

log = logging.getLogger(__name__)

EXIT_BY_STATUS = {"succeeded": 0, "partial": 1, "failed": 1, "aborted": 3}


@dataclass
class RunResult:
    """How a run ended."""

    run_id: int
    status: str
    planned: int
    counts: BatchCounts = field(default_factory=BatchCounts)
    requests: int = 0
    seconds: float = 0.0
    rate_limit_wait: float = 0.0  # seconds the run's requests waited for the rate limit

    @property
    def exit_code(self) -> int:
        """The contract's exit code for this outcome."""
        return EXIT_BY_STATUS[self.status]

    def summary(self) -> str:
        """One line for humans and logs."""
        c = self.counts
        waited = f" ({self.rate_limit_wait:.0f}s of it waiting for the rate limit)" \
            if self.rate_limit_wait >= 1 else ""
        nulled = f"; {c.nulled} field(s) stored as NULL (see the warnings)" if c.nulled else ""
        return (f"run {self.run_id} {self.status}: {self.planned} planned, {c.fetched} fetched, "
                f"{c.changed} changed, {c.deleted} deleted, {c.failed} failed; "
                f"{c.granted} granted, {c.revoked} revoked; {self.requests} requests in {self.seconds:.1f}s"
                f"{waited}{nulled}")


def plan_ids(engine: Engine, *, now: dt.datetime, ignore_due: bool = False) -> list[str]:
    """Tracked connection ids that are due at ``now`` (every tracked one with ``ignore_due``)."""
    c = connections.c
    query = select(c.id).where(c.tracked.is_(True)).order_by(c.id)
    if not ignore_due:
        query = query.where(or_(c.next_due_at.is_(None), c.next_due_at <= now))
    with translate_errors(engine), engine.connect() as conn:
        return list(conn.scalars(query))


def start_run(engine: Engine, *, trigger: str, planned: int, now: Callable[[], dt.datetime]) -> int:
    """Insert the ``sync_runs`` row (status running, with this process's pid and host) and return its id."""
    with translate_errors(engine), engine.begin() as conn:
        run_id = conn.execute(
            insert(sync_runs)
            .values(trigger=trigger, started_at=now(), status="running", connections_planned=planned,
                    pid=os.getpid(), host=socket.gethostname())
            .returning(sync_runs.c.id)
        ).scalar_one()
    return int(run_id)


def finish_run(engine: Engine, result: RunResult, *, now: Callable[[], dt.datetime], error: str | None = None) -> None:
    """Close the run row with its final status, request count and error text."""
    with translate_errors(engine), engine.begin() as conn:
        conn.execute(
            update(sync_runs).where(sync_runs.c.id == result.run_id, sync_runs.c.status == "running")
            .values(status=result.status, finished_at=now(), requests=result.requests, error=error,
                    connections_planned=result.planned)
        )


def close_stale_runs(engine: Engine, *, now: Callable[[], dt.datetime]) -> int:
    """Mark ``running`` rows as aborted: called with the lock held, so their processes have ended."""
    with translate_errors(engine), engine.begin() as conn:
        closed = conn.execute(
            update(sync_runs).where(sync_runs.c.status == "running")
            .values(status="aborted", finished_at=now(),
                    error="the process running it ended before finishing (found by the next run)")
        ).rowcount
    if closed:
        log.warning("closed %d run(s) left running by a process that ended", closed)
    return int(closed)


def run_outcomes(
    engine: Engine,
    outcomes: Generator[Outcome, None, None],
    *,
    run_id: int,
    client: SmartcarClient,
    state: PassState,
    batch_size: int = 500,
    cadence: Cadence = DEFAULT_CADENCE,
    metrics: Metrics | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    on_batch: Callable[[Connection, BatchCounts], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Store a stream of outcomes in batches as the run ``run_id``; return how it ended.

    ``state.planned`` is the number of connections expected (None: as many as
    come) and ``state.incomplete`` why the pass could not see everything; the
    outcome stream may set both as it goes.
    ``on_batch`` runs inside each batch's transaction (a checkpoint, say);
    ``progress`` is called with 1 for every outcome (a progress bar).
    Raises SyncAborted (exit 3) when the API refuses the application or the
    database goes away; everything stored before that stays, nothing more is
    written. When ``client.cancelled`` is set from outside (the daemon stopping),
    requests in flight finish, what they fetched is stored, and the run ends
    ``aborted``, saying how far it got.
    """
    started = time.monotonic()
    requests_before = client.requests_sent
    waited_before = client.limiter.waited if client.limiter is not None else 0.0
    with translate_errors(engine), engine.connect() as conn:
        started_at = conn.scalar(select(sync_runs.c.started_at).where(sync_runs.c.id == run_id))
    run = RunResult(run_id=run_id, status="running", planned=state.planned or 0)
    batch: list[Outcome] = []

    writer = BatchWriter(engine, run_id, cadence=cadence, pass_started_at=started_at, on_batch=on_batch)

    def flush() -> None:
        counts = writer.write(batch)
        log.debug("run %s: stored a batch of %d", run_id, len(batch))
        run.counts.add(counts)
        if metrics is not None:
            metrics.batch(counts)
        batch.clear()

    def end(status: str, error: str | None = None) -> None:
        c = run.counts
        done = c.fetched + c.deleted + c.failed
        run.planned = done if state.planned is None else state.planned
        run.status = status
        run.requests = client.requests_sent - requests_before
        run.seconds = time.monotonic() - started
        run.rate_limit_wait = (client.limiter.waited if client.limiter is not None else 0.0) - waited_before
        finished_at = now()
        try:
            finish_run(engine, run, now=lambda: finished_at, error=error)
        finally:
            if metrics is not None:
                metrics.run(status=status, seconds=run.seconds, finished_at=finished_at)

    try:
        with closing(outcomes):
            for outcome in outcomes:
                if isinstance(outcome, Failed):
                    log.warning("connection %s failed: %s", outcome.connection_id, outcome.error,
                                extra={"run_id": run.run_id, "connection_id": outcome.connection_id})
                batch.append(outcome)
                if progress is not None:
                    progress(1)
                if len(batch) >= batch_size:
                    flush()
        if batch:
            flush()
    except (FatalApiError, DatabaseError) as error:
        try:
            end("aborted", str(error))
        except DatabaseError:
            log.error("could not record the end of run %s", run.run_id)
        log.error("%s; %d fetched results were not stored; cause: %s", run.summary(), len(batch), error,
                  extra={"run_id": run.run_id, "status": run.status})
        raise SyncAborted(run_id=run.run_id, cause=error) from error
    except BaseException as error:  # a bug or Ctrl-C: record the run as aborted, then let it through
        try:
            end("aborted", one_line(error, limit=500))
        except Exception as failure:
            log.error("could not record the end of run %s: %s", run.run_id, one_line(failure), exc_info=True)
        raise
    c = run.counts
    done = c.fetched + c.deleted + c.failed
    planned = done if state.planned is None else state.planned
    problem = state.incomplete
    if client.cancelled.is_set() and (done < planned or problem):
        end("aborted", f"stopped on request after {done} of {planned or done} connections")
    elif problem:
        end("partial" if done else "failed", problem)
    elif c.failed == 0:
        end("succeeded")
    else:
        end("partial" if c.failed < planned else "failed")
    log.info(run.summary(), extra={"run_id": run.run_id, "status": run.status,
                                   "duration_seconds": round(run.seconds, 3),
                                   "rate_limit_wait_seconds": round(run.rate_limit_wait, 3)})
    return run


def pass_outcomes(
    engine: Engine,
    *,
    client: SmartcarClient,
    config: Config,
    state: PassState,
    due: Sequence[str],
    run_id: int,
    now: Callable[[], dt.datetime] = utcnow,
) -> Generator[Outcome, None, None]:
    """The outcomes of one pass: ``auto`` chooses first, then the listing or one GET per due id."""
    first_page = None
    if state.strategy == "auto":
        state.planned = len(due)  # until the listing is chosen: then as many as it shows
        try:
            state.strategy, first_page = choose_strategy(engine, client=client, due=due,
                                                         page_size=config.sync.page_size)
        except Cancelled:
            state.incomplete = "stopped on request"
            return
    window = config.sync.batch_size + config.api.concurrency
    if state.strategy == "list":
        state.planned = None
        log.info("run %s: the full listing, %d a page", run_id, config.sync.page_size,
                 extra={"run_id": run_id, "strategy": "list"})
        yield from listing_outcomes(engine, client=client, page_size=config.sync.page_size,
                                    concurrency=config.api.concurrency, window=window, state=state,
                                    first_page=first_page, track_new=config.sync.track_listed, now=now)
        return
    state.planned = len(due)
    log.info("run %s: %d connection(s) to fetch one by one", run_id, len(due),
             extra={"run_id": run_id, "strategy": "ids"})
    yield from fetch_outcomes(due, client=client, concurrency=config.api.concurrency, window=window, now=now)


def known_connections(engine: Engine) -> int:
    """How many connections the database knows that are not deleted: a lower bound of the application's size."""
    with translate_errors(engine), engine.connect() as conn:
        return conn.scalar(select(func.count()).where(connections.c.status != "deleted")) or 0


def choose_strategy(
    engine: Engine, *, client: SmartcarClient, due: Sequence[str], page_size: int
) -> tuple[str, ListingPage | None]:
    """``list`` when the listing needs fewer requests than one GET per due id, else ``ids``.

    The listing costs one request per ``page_size`` connections of the whole
    application. The database gives a lower bound of that size; only when the
    listing could still win is page 1 fetched to read ``totalCount`` (and then
    reused as the listing's first page if the listing wins).
    """
    known = known_connections(engine)
    if len(due) <= max(1, -(-known // page_size)):
        return "ids", None
    first = client.list_page(1, page_size)
    size = first.total_count if first.total_count is not None else known
    pages = max(1, -(-size // page_size))
    log.info("auto strategy: %d due id(s) vs %d listing page(s) for %d connection(s)", len(due), pages, size)
    return ("list", first) if pages < len(due) else ("ids", None)


def build_client(
    config: Config,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    cancelled: threading.Event | None = None,
    metrics: Metrics | None = None,
    limiter: TokenBucket | None = None,
) -> SmartcarClient:
    """A client from the config; ``transport``, ``sleep``, ``cancelled`` and ``limiter`` are injectable.

    By default every client of the process shares one token bucket per rate-limit setting.
    """
    cancelled = cancelled or threading.Event()
    r = config.retry
    retry = RetryPolicy(
        max_attempts=r.max_attempts, initial_backoff=r.initial_backoff_seconds,
        max_backoff=r.max_backoff_seconds, max_retry_after=r.max_retry_after_seconds,
        # By default a wait is cut short when the run is cancelled.
        sleep=sleep or cancelled.wait, deadline=config.api.retry_deadline_seconds,
    )
    http = make_http_client(timeout=config.api.timeout_seconds, concurrency=config.api.concurrency,
                            transport=transport)
    auth = token_source(config.api, http=http, retry=retry)
    if limiter is None:
        limiter = shared_bucket(config.rate_limit.capacity, config.rate_limit.per_minute)
    return SmartcarClient(base_url=config.api.base_url, auth=auth, http=http, retry=retry, now=now,
                          cancelled=cancelled, on_request=metrics.request if metrics else None, limiter=limiter,
                          limits=config.api.read_limits())


def sync(
    config: Config,
    engine: Engine,
    *,
    ignore_due: bool = False,
    strategy: str | None = None,
    trigger: str = "sync",
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    cancelled: threading.Event | None = None,
    metrics: Metrics | None = None,
    limiter: TokenBucket | None = None,
) -> RunResult:
    """One pass; the library behind ``smartcar-etl sync``.

    ``strategy`` (default: the config's, ``auto``): ``ids`` fetches the tracked
    connections that are due (every tracked one with ``ignore_due``) one by one;
    ``list`` reads the full listing; ``auto`` picks whichever needs fewer
    requests. Takes the database's run lock (LockHeld, exit 4, if another run
    has it) and closes runs left ``running`` by processes that died.
    """
    require_migrated(engine)
    state = PassState(strategy=strategy or config.sync.strategy)
    client = build_client(config, transport=transport, sleep=sleep, now=now, cancelled=cancelled, metrics=metrics,
                          limiter=limiter)
    with locked_pass(engine, client, now=now):
        due = [] if state.strategy == "list" else plan_ids(engine, now=now(), ignore_due=ignore_due)
        run_id = start_run(engine, trigger=trigger, planned=len(due), now=now)
        outcomes = pass_outcomes(engine, client=client, config=config, state=state, due=due, run_id=run_id, now=now)
        return run_outcomes(engine, outcomes, run_id=run_id, client=client, state=state,
                            batch_size=config.sync.batch_size, cadence=Cadence.from_config(config.schedule),
                            metrics=metrics, now=now)


@contextmanager
def locked_pass(engine: Engine, client: SmartcarClient, *, now: Callable[[], dt.datetime] = utcnow) -> Iterator[None]:
    """What every pass runs in: the run lock held, stale runs closed; the client is closed at the end."""
    try:
        with run_lock(engine):
            close_stale_runs(engine, now=now)
            yield
    finally:
        client.http.close()
