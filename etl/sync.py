"""The one orchestration: plan -> fetch (concurrently) -> parse -> store (in batches) -> run record."""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Engine, insert, or_, select, update

from etl.api.auth import token_source
from etl.api.client import Cancelled, SmartcarClient, make_http_client, utcnow
from etl.api.retry import RetryPolicy
from etl.cadence import Cadence
from etl.config import Config
from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, sync_runs
from etl.errors import ApiError, DatabaseError, FatalApiError, SyncAborted
from etl.lock import run_lock
from etl.metrics import Metrics
from etl.store import DEFAULT_CADENCE, BatchCounts, Failed, Fetched, Gone, Outcome, store_batch

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

    @property
    def exit_code(self) -> int:
        """The contract's exit code for this outcome."""
        return EXIT_BY_STATUS[self.status]

    def summary(self) -> str:
        """One line for humans and logs."""
        c = self.counts
        return (f"run {self.run_id} {self.status}: {self.planned} planned, {c.fetched} fetched, "
                f"{c.changed} changed, {c.deleted} deleted, {c.failed} failed; "
                f"{c.granted} granted, {c.revoked} revoked; {self.requests} requests in {self.seconds:.1f}s")


def plan_ids(engine: Engine, *, now: dt.datetime, ignore_due: bool = False) -> list[str]:
    """Tracked connection ids that are due at ``now`` (every tracked one with ``ignore_due``)."""
    c = connections.c
    query = select(c.id).where(c.tracked.is_(True)).order_by(c.id)
    if not ignore_due:
        query = query.where(or_(c.next_due_at.is_(None), c.next_due_at <= now))
    with translate_errors(engine), engine.connect() as conn:
        return list(conn.scalars(query))


def fetch_outcomes(
    ids: Sequence[str],
    *,
    client: SmartcarClient,
    concurrency: int,
    window: int,
    now: Callable[[], dt.datetime] = utcnow,
) -> Generator[Outcome, None, None]:
    """Fetch every id with up to ``concurrency`` requests in flight; yield outcomes as they complete.

    At most ``window`` results wait to be consumed, so fetching goes on while
    the consumer writes a batch, and memory stays bounded. A FatalApiError is
    raised as soon as it is seen; the other requests are cancelled.
    """

    def fetch_one(connection_id: str) -> Outcome:
        try:
            record = client.get_connection(connection_id)
        except FatalApiError:
            client.cancelled.set()
            raise
        except ApiError as error:
            return Failed(connection_id, now(), error)
        at = now()
        return Gone(connection_id, at) if record is None else Fetched(connection_id, at, record)

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fetch")
    finished: queue.SimpleQueue[Future[Outcome]] = queue.SimpleQueue()
    remaining = iter(ids)
    in_flight = 0  # submitted and not yet consumed

    def fill() -> None:
        nonlocal in_flight
        while in_flight < window and not client.cancelled.is_set():
            connection_id = next(remaining, None)
            if connection_id is None:
                return
            pool.submit(fetch_one, connection_id).add_done_callback(finished.put)
            in_flight += 1

    try:
        fill()
        while in_flight:
            future = finished.get()
            in_flight -= 1
            error = future.exception()
            if isinstance(error, Cancelled):
                continue
            if error is not None:
                raise error
            yield future.result()
            fill()
    finally:
        client.cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)


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
            .values(status=result.status, finished_at=now(), requests=result.requests, error=error)
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


def _count_into_run(counts: BatchCounts) -> dict[str, object]:
    c = sync_runs.c
    return {
        "connections_fetched": c.connections_fetched + counts.fetched,
        "connections_changed": c.connections_changed + counts.changed,
        "connections_deleted": c.connections_deleted + counts.deleted,
        "connections_failed": c.connections_failed + counts.failed,
        "permissions_granted": c.permissions_granted + counts.granted,
        "permissions_revoked": c.permissions_revoked + counts.revoked,
    }


def run_ids(
    engine: Engine,
    ids: Sequence[str],
    *,
    client: SmartcarClient,
    trigger: str = "sync",
    batch_size: int = 500,
    concurrency: int = 8,
    cadence: Cadence = DEFAULT_CADENCE,
    metrics: Metrics | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> RunResult:
    """Fetch and store the given connection ids as one run; return how it ended.

    Raises SyncAborted (exit 3) when the API refuses the application or the
    database goes away; everything stored before that stays, nothing more is
    written. When ``client.cancelled`` is set from outside (the daemon stopping),
    requests in flight finish, what they fetched is stored, and the run ends
    ``aborted``, saying how far it got.
    """
    started = time.monotonic()
    requests_before = client.requests_sent
    started_at = now()
    run = RunResult(run_id=start_run(engine, trigger=trigger, planned=len(ids), now=lambda: started_at),
                    status="running", planned=len(ids))
    log.info("run %s started: %d connections to fetch", run.run_id, len(ids),
             extra={"run_id": run.run_id, "trigger": trigger})
    batch: list[Outcome] = []

    def flush() -> None:
        with translate_errors(engine), engine.begin() as conn:
            counts = store_batch(conn=conn, run_id=run.run_id, outcomes=batch, cadence=cadence,
                                 pass_started_at=started_at)
            conn.execute(update(sync_runs).where(sync_runs.c.id == run.run_id)
                         .values(**_count_into_run(counts)))
        run.counts.add(counts)
        if metrics is not None:
            metrics.batch(**counts.__dict__)
        batch.clear()

    def end(status: str, error: str | None = None) -> None:
        run.status = status
        run.requests = client.requests_sent - requests_before
        run.seconds = time.monotonic() - started
        finished_at = now()
        try:
            finish_run(engine, run, now=lambda: finished_at, error=error)
        finally:
            if metrics is not None:
                metrics.run(status=status, seconds=run.seconds, finished_at=finished_at)

    try:
        outcomes = fetch_outcomes(ids, client=client, concurrency=concurrency,
                                  window=batch_size + concurrency, now=now)
        with closing(outcomes):
            for outcome in outcomes:
                if isinstance(outcome, Failed):
                    log.warning("connection %s failed: %s", outcome.connection_id, outcome.error,
                                extra={"run_id": run.run_id, "connection_id": outcome.connection_id})
                batch.append(outcome)
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
            end("aborted", f"{type(error).__name__}: {error}"[:500])
        except Exception:
            log.exception("could not record the end of run %s", run.run_id)
        raise
    c = run.counts
    done = c.fetched + c.deleted + c.failed
    if done < run.planned:
        end("aborted", f"stopped on request after {done} of {run.planned} connections")
    elif c.failed == 0:
        end("succeeded")
    else:
        end("partial" if c.failed < run.planned else "failed")
    log.info(run.summary(), extra={"run_id": run.run_id, "status": run.status,
                                   "duration_seconds": round(run.seconds, 3)})
    return run


def build_client(
    config: Config,
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    cancelled: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> SmartcarClient:
    """A client from the config; ``transport``, ``sleep`` and ``cancelled`` are injectable."""
    cancelled = cancelled or threading.Event()
    r = config.retry
    retry = RetryPolicy(
        max_attempts=r.max_attempts, initial_backoff=r.initial_backoff_seconds,
        max_backoff=r.max_backoff_seconds, max_retry_after=r.max_retry_after_seconds,
        # By default a wait is cut short when the run is cancelled.
        sleep=sleep or cancelled.wait,
    )
    http = make_http_client(timeout=config.api.timeout_seconds, concurrency=config.api.concurrency,
                            transport=transport)
    auth = token_source(config.api, http=http, retry=retry)
    return SmartcarClient(base_url=config.api.base_url, auth=auth, http=http, retry=retry, now=now,
                          cancelled=cancelled, on_request=metrics.request if metrics else None)


def sync(
    config: Config,
    engine: Engine,
    *,
    ignore_due: bool = False,
    trigger: str = "sync",
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], object] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    cancelled: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> RunResult:
    """One pass over the tracked connections that are due; the library behind ``smartcar-etl sync``.

    Takes the database's run lock (LockHeld, exit 4, if another run has it),
    closes runs left ``running`` by processes that died, then fetches and stores.
    """
    require_migrated(engine)
    client = build_client(config, transport=transport, sleep=sleep, now=now, cancelled=cancelled,
                          metrics=metrics)
    try:
        with run_lock(engine):
            close_stale_runs(engine, now=now)
            ids = plan_ids(engine, now=now(), ignore_due=ignore_due)
            return run_ids(engine, ids, client=client, trigger=trigger, batch_size=config.sync.batch_size,
                           concurrency=config.api.concurrency, cadence=Cadence.from_config(config.schedule),
                           metrics=metrics, now=now)
    finally:
        client.http.close()
