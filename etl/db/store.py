"""The Store: one object that owns the engine and every statement the job runs (reports and ``check`` aside).

Callers ask for what they want by name (``due_ids``, ``start_run``,
``write_batch``, ``track``...). Each verb is one short transaction through one
helper that translates the driver's errors: the database unreachable is
``DatabaseError`` (exit 3); a refused row is left to the verb (``write_batch``
turns it into a failed fetch of that one connection). What differs between
databases is in ``etl.db.dialects``. Compare APScheduler 3's
``SQLAlchemyJobStore``: the engine, the tables and every query in one class.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, and_, case, exc, func, insert, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from etl.cadence import Cadence
from etl.db import dialects
from etl.db.archive import Archived, Archiving, archived_at, settle
from etl.db.batch import DEFAULT_CADENCE, one_per_connection, store_batch
from etl.db.engine import current_revision, require_migrated, safe_url, translate_errors, upgrade
from etl.db.models import backfills, connections, permission_grants, rate_budgets, sync_runs
from etl.db.rebuild import RebuildResult, rebuild, uncovered
from etl.errors import ConfigError, DatabaseError, EtlError, RowRejected, one_line
from etl.outcomes import BatchCounts, Failed, Outcome

log = logging.getLogger(__name__)
CHUNK = 500  # ids per statement: well under SQLite's limit on bound parameters
EPSILON = 1e-9  # refill sums in floating point: 0.9 + 0.1 may be 0.9999999999999999
# Seconds a lease that granted nothing waits at least: what refills in that time is leased together
# afterwards, so the floor costs no throughput, and a process never spins one transaction a millisecond.
MIN_WAIT = 0.05
# A batch whose transaction lost a lock race (a deadlock) is rolled back whole; it runs again this many
# times in all, after these pauses (seconds), before it counts as refused.
BATCH_ATTEMPTS = 3
RETRY_PAUSE = 0.05


class FinishedRun(Protocol):
    """What ``finish_run`` records of a run."""

    run_id: int
    status: str
    planned: int
    requests: int
    deferred: int
    rate_limit_wait: float
    deletions_held: int


class BackfillSource(Protocol):
    """What identifies a backfill: its kind (``ids`` or ``all``), a fingerprint of its ids, a name."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def total(self) -> int | None: ...


@dataclass(frozen=True)
class OpenBackfill:
    """The backfill a run works on: new, or the interrupted one it resumes."""

    id: int
    started_at: dt.datetime
    next_page: int
    set_aside: dt.datetime | None = None  # start of an interrupted backfill this new one replaces


@dataclass(frozen=True)
class Bucket:
    """A token bucket's shape: how many tokens it holds, and how fast it refills."""

    capacity: float
    per_second: float


@dataclass(frozen=True)
class Lease:
    """What a lease got: tokens granted, how long until the next one when none was, and what is left."""

    granted: int
    wait: float
    tokens: float


@dataclass(frozen=True)
class TrackResult:
    """How many ids were new, tracked again, or already tracked."""

    added: int
    retracked: int
    unchanged: int


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _bounded(tokens: float, capacity: float) -> float:
    """``tokens`` within [-capacity, capacity]: a Retry-After, however long, costs at most one bucket's refill
    (NaN, which no comparison admits, reads as -capacity)."""
    return min(capacity, max(-capacity, tokens))


def _healthy() -> ColumnElement[bool]:
    """An active connection whose last fetch succeeded: due one (current) interval after it, at the latest."""
    return and_(connections.c.status == "active", connections.c.consecutive_failures == 0)


class Store:
    """The database of one job: its engine, and a verb for everything the job reads or writes."""

    def __init__(self, engine: Engine, *, archive: bool = True) -> None:
        self.engine = engine
        self.url = safe_url(engine.url.render_as_string())
        self.archive = archive  # batches archive their documents (config ``archive.enabled``)
        self._future_seen: set[str] = set()  # budget keys whose row was found updated in the future (logged once)

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reading; driver errors of the database itself become DatabaseError."""
        with translate_errors(self.engine), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self, *, retried: bool = False) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite: the write lock from the start);
        ``retried``: the caller runs it again if the database gives it up (``translate_errors``)."""
        with translate_errors(self.engine, retried=retried), self.engine.connect() as conn:
            conn.execution_options(**{dialects.IMMEDIATE: True})
            with conn.begin():
                yield conn

    # -- schema ----------------------------------------------------------------------------

    def upgrade(self) -> tuple[str | None, str]:
        """Apply every migration; (revision before, revision after)."""
        return upgrade(self.engine)

    def current_revision(self) -> str | None:
        """The database's migration revision, or None for an empty database."""
        return current_revision(self.engine)

    def require_migrated(self) -> None:
        """NotMigratedError (exit 2) unless the schema is at the newest revision."""
        require_migrated(self.engine)

    # -- the run lock ------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this database's run lock, or raise LockHeld (exit 4) naming the run that has it."""
        with translate_errors(self.engine), dialects.run_lock(self.engine, url=self.url, holder=self.lock_holder):
            yield

    def lock_holder(self) -> str:
        """The run that holds the lock, as its ``running`` row tells (best effort)."""
        r = sync_runs.c
        try:
            with self.read() as conn:
                row = conn.execute(select(r.id, r.trigger, r.started_at, r.pid, r.host)
                                   .where(r.status == "running").order_by(r.id.desc()).limit(1)).first()
        except EtlError:  # the description must never hide the LockHeld itself
            row = None
        if row is None:
            return "a run that has not recorded itself yet"
        where = f", pid {row.pid}" + (f" on {row.host}" if row.host else "") if row.pid else ""
        return f"run {row.id} ({row.trigger}, started {row.started_at:%Y-%m-%d %H:%M:%S} UTC{where})"

    # -- runs ---------------------------------------------------------------------------------

    def start_run(self, *, trigger: str, planned: int, at: dt.datetime) -> tuple[int, dt.datetime]:
        """Insert the ``sync_runs`` row (running, with this process's pid and host); (its id, its start)."""
        with self._write() as conn:
            run_id = conn.execute(
                insert(sync_runs)
                .values(trigger=trigger, started_at=at, status="running", connections_planned=planned,
                        pid=os.getpid(), host=socket.gethostname())
                .returning(sync_runs.c.id)
            ).scalar_one()
        return int(run_id), at

    def finish_run(self, run: FinishedRun, *, at: dt.datetime, error: str | None = None) -> None:
        """Close the run row with its final status, request count and error text."""
        with self._write() as conn:
            conn.execute(
                update(sync_runs).where(sync_runs.c.id == run.run_id, sync_runs.c.status == "running")
                .values(status=run.status, finished_at=at, requests=run.requests, error=error,
                        connections_planned=run.planned, connections_deferred=run.deferred,
                        rate_limit_wait_seconds=run.rate_limit_wait, deletions_held=run.deletions_held)
            )

    def close_stale_runs(self, *, at: dt.datetime) -> int:
        """Mark ``running`` rows as aborted, keeping the counters they had reached: called with the lock held,
        so no process runs them any more (it ended, or it lost its connection to the database and the lock)."""
        with self._write() as conn:
            closed = conn.execute(
                update(sync_runs).where(sync_runs.c.status == "running")
                .values(status="aborted", finished_at=at,
                        error="abandoned: a later run found it still running without the run lock (its process "
                              "ended, or lost its connection to the database); its counters are as far as it got")
            ).rowcount
        if closed:
            log.warning("closed %d abandoned run(s): still running, without the run lock", closed)
        return int(closed)

    def abandon_runs_of_this_process(self, *, at: dt.datetime, error: str) -> None:
        """Record this process's running run as aborted (a daemon leaving without waiting for it)."""
        with self._write() as conn:
            conn.execute(update(sync_runs).where(sync_runs.c.status == "running", sync_runs.c.pid == os.getpid())
                         .values(status="aborted", finished_at=at, error=error))

    def last_success_at(self) -> dt.datetime | None:
        """When the last run that succeeded finished."""
        with self.read() as conn:
            last: dt.datetime | None = conn.scalar(
                select(func.max(sync_runs.c.finished_at)).where(sync_runs.c.status == "succeeded"))
        return last

    # -- batches ------------------------------------------------------------------------------

    def batch_writer(
        self,
        run_id: int,
        *,
        cadence: Cadence = DEFAULT_CADENCE,
        pass_started_at: dt.datetime | None = None,
        checkpoint: Callable[[], tuple[int, int | None] | None] | None = None,
    ) -> BatchWriter:
        """A writer of the run's batches; ``checkpoint`` gives (backfill id, next page) to record with each."""
        return BatchWriter(self, run_id, cadence, pass_started_at, checkpoint)

    # -- the archive ---------------------------------------------------------------------------------

    def archived(self, connection_id: str, at: dt.datetime | None = None) -> Archived | None:
        """The document (or 404) of the connection received by ``at`` (the latest by default), or None."""
        with self.read() as conn:
            try:
                return archived_at(conn, connection_id, at)
            except ValueError as error:
                raise DatabaseError(url=self.url, reason=f"the archived document of connection {connection_id} "
                                                         f"cannot be read: {error}") from None

    def rebuild(self, *, dry_run: bool = False) -> RebuildResult:
        """Derive the history again from the archive (``etl.db.rebuild``), under the run lock, in one
        transaction; with ``dry_run`` it is rolled back. ConfigError (exit 2), naming them, when some
        connections have observations the archive does not hold; ``UnverifiableArchive`` (exit 2) when a body
        cannot be verified. Either way nothing changes."""
        with self.lock(), translate_errors(self.engine), self.engine.connect() as conn:
            conn.execution_options(**{dialects.IMMEDIATE: True})
            with conn.begin() as transaction:
                settle(conn)
                shown, total = uncovered(conn)
                if total:
                    more = f" and {total - len(shown)} more" if total > len(shown) else ""
                    msg = (f"the archive does not hold every observation of {total} connection(s) "
                           f"({', '.join(shown)}{more}), e.g. from a time when archive.enabled was off; "
                           "nothing was rebuilt (see the README: The document archive)")
                    raise ConfigError(msg)
                result = rebuild(conn)
                if dry_run:
                    transaction.rollback()
        return result

    # -- the rate budget -------------------------------------------------------------------------------

    def lease_tokens(self, key: str, *, want: int, bucket: Bucket, at: dt.datetime | None = None) -> Lease:
        """Take up to ``want`` tokens from the application's bucket, in one short transaction.

        The bucket refills continuously at ``bucket.per_second`` up to ``bucket.capacity`` (the row
        follows the configuration), and never holds less than ``-capacity``. Time is ``at`` when given
        (tests), else the database server's clock where there is one, else this machine's; a row updated
        in the future (the clock stepped back) counts from now. Row-locked on PostgreSQL and MariaDB,
        ``BEGIN IMMEDIATE`` on SQLite: two processes never take the same token. A lease that grants
        nothing waits at least ``MIN_WAIT``.
        """
        with self._write() as conn:
            now = at or dialects.server_now(conn) or dt.datetime.now(dt.UTC)
            row = conn.execute(select(rate_budgets).where(rate_budgets.c.key == key).with_for_update()).first()
            tokens = bucket.capacity if row is None else self._refilled(key, row, now, bucket)
            granted = min(want, int(tokens + EPSILON)) if tokens + EPSILON >= 1 else 0  # 0.999...: a token
            tokens -= granted
            values = {"capacity": bucket.capacity, "per_second": bucket.per_second, "tokens": tokens,
                      "updated_at": now}
            if row is None:
                conn.execute(insert(rate_budgets).values(key=key, **values))
            else:
                conn.execute(update(rate_budgets).where(rate_budgets.c.key == key).values(**values))
        wait = 0.0 if granted else max(MIN_WAIT, (1 - tokens) / bucket.per_second)
        return Lease(granted=granted, wait=wait, tokens=tokens)

    def _refilled(self, key: str, row: Any, now: dt.datetime, bucket: Bucket) -> float:
        """The row's tokens refilled up to ``now``, within [-capacity, capacity]; a future ``updated_at`` is now."""
        if row.updated_at > now and key not in self._future_seen:
            self._future_seen.add(key)
            log.info("rate budget %r: last updated at %s, after now (%s): the clock stepped back? Counting from now",
                     key[:40], row.updated_at.isoformat(), now.isoformat())
        elapsed = max(0.0, (now - row.updated_at).total_seconds())
        tokens = _bounded(row.tokens, bucket.capacity)
        return float(min(bucket.capacity, tokens + elapsed * bucket.per_second))

    def drain_tokens(self, key: str, *, seconds: float, at: dt.datetime | None = None) -> None:
        """Empty the bucket for ``seconds`` (a 429 with Retry-After): every process backs off that long,
        at most as long as it takes to refill ``capacity`` tokens (the bucket never holds less than -capacity)."""
        with self._write() as conn:
            now = at or dialects.server_now(conn) or dt.datetime.now(dt.UTC)
            row = conn.execute(select(rate_budgets).where(rate_budgets.c.key == key).with_for_update()).first()
            if row is None:
                return
            tokens = _bounded(-max(0.0, seconds) * row.per_second, row.capacity)  # NaN: max() keeps 0.0
            conn.execute(update(rate_budgets).where(rate_budgets.c.key == key)
                         .values(tokens=tokens, updated_at=now))

    def budget_tokens(self, key: str, *, at: dt.datetime, empty: float) -> float:
        """The tokens in the bucket at ``at``, refilled since its last lease (``empty`` before the first)."""
        row = self.budget(key)
        if row is None:
            return empty
        elapsed = max(0.0, (at - row.updated_at).total_seconds())
        return float(min(row.capacity, _bounded(row.tokens, row.capacity) + elapsed * row.per_second))

    def budget(self, key: str) -> Any:
        """The bucket's row (capacity, per_second, tokens, updated_at), or None before the first request."""
        with self.read() as conn:
            return conn.execute(select(rate_budgets).where(rate_budgets.c.key == key)).first()

    # -- which connections ------------------------------------------------------------------------

    def due_ids(self, *, at: dt.datetime, ignore_due: bool = False, fetched_before: dt.datetime | None = None,
                ) -> list[str]:
        """Tracked connection ids that are due at ``at`` (every tracked one with ``ignore_due``), most overdue first.

        ``fetched_before``: a healthy active connection last fetched before then is due too, whatever
        due time an earlier, longer ``schedule.interval`` gave it (a shorter interval applies at once).
        """
        c = connections.c
        # Most overdue first: never attempted, then by due time, so a pass cut short by --max-duration
        # leaves the freshest for later and never fetches one twice while another waits.
        query = select(c.id).where(c.tracked.is_(True)).order_by(
            c.last_attempt_at.is_(None).desc(), c.next_due_at.is_(None).desc(), c.next_due_at, c.id)  # no NULLS FIRST
        if not ignore_due:
            due = [c.next_due_at.is_(None), c.next_due_at <= at]
            if fetched_before is not None:
                due.append(and_(_healthy(), c.last_attempt_at < fetched_before))
            query = query.where(or_(*due))
        with self.read() as conn:
            return list(conn.scalars(query))

    def tracked_and_next_due(self, *, fetched_within: dt.timedelta) -> tuple[int, dt.datetime | None]:
        """How many connections are tracked, and the earliest time one of them is due (None: one is due now).

        ``fetched_within``: as ``due_ids``' ``fetched_before``, a healthy active connection is due this long
        after its last fetch at the latest.
        """
        c = connections.c
        query = select(func.count(), func.count(c.next_due_at), func.min(c.next_due_at),
                       func.min(case((_healthy(), c.last_attempt_at)))).where(c.tracked.is_(True))
        with self.read() as conn:
            tracked, timed, earliest, oldest_healthy = conn.execute(query).one()
        if timed < tracked:
            return tracked, None
        if oldest_healthy is not None and earliest is not None:
            earliest = min(earliest, oldest_healthy + fetched_within)
        return tracked, earliest

    def known_connections(self) -> int:
        """How many connections the database knows that are not deleted: a lower bound of the application's size."""
        with self.read() as conn:
            return conn.scalar(select(func.count()).where(connections.c.status != "deleted")) or 0

    def live_ids(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` whose connection is ``active`` or ``pending`` (a 404 would make them ``deleted``)."""
        live: set[str] = set()
        with self.read() as conn:
            for chunk in _chunks(ids):
                live.update(conn.scalars(select(connections.c.id).where(
                    dialects.among(conn, connections.c.id, chunk), connections.c.status.in_(("active", "pending")))))
        return live

    def untracked_ids(self) -> set[str]:
        """The connections the user untracked (few: the listing skips them)."""
        with self.read() as conn:
            return set(conn.scalars(select(connections.c.id).where(connections.c.tracked.is_(False))))

    def known_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` the database holds."""
        with self.read() as conn:
            return set(conn.scalars(select(connections.c.id).where(dialects.among(conn, connections.c.id, list(ids)))))

    def missing_from(self, seen: Collection[str], *, since: dt.datetime | None = None) -> list[str]:
        """Tracked pending or active connections not in ``seen`` (and, with ``since``, not attempted since then)."""
        c = connections.c
        query = select(c.id).where(c.tracked.is_(True), c.status.in_(["pending", "active"]))
        if since is not None:
            query = query.where(or_(c.last_attempt_at.is_(None), c.last_attempt_at < since))
        with self.read() as conn:
            return sorted(set(conn.scalars(query)).difference(seen))

    def not_attempted_since(self, ids: Sequence[str], since: dt.datetime | None) -> list[str]:
        """The ids not attempted since ``since`` (all of them when ``since`` is None), in their order."""
        if since is None:
            return list(ids)
        done: set[str] = set()
        with self.read() as conn:
            for chunk in _chunks(ids):
                done.update(conn.scalars(select(connections.c.id).where(
                    connections.c.id.in_(chunk), connections.c.last_attempt_at >= since)))
        return [i for i in ids if i not in done]

    # -- tracking -------------------------------------------------------------------------------

    def track(self, ids: Sequence[str], *, at: dt.datetime) -> TrackResult:
        """Start tracking ``ids`` (already canonical); untracked ones are tracked again. One transaction."""
        added = retracked = 0
        with self._write() as conn:
            for chunk in _chunks(ids):
                known = dict(conn.execute(
                    select(connections.c.id, connections.c.tracked).where(connections.c.id.in_(chunk))).all())
                new = [{"id": i, "status": "pending", "tracked": True, "tracked_at": at}
                       for i in chunk if i not in known]
                dialects.upsert(conn=conn, table=connections, key=["id"], update=[], rows=new)
                again = [i for i, tracked in known.items() if not tracked]
                if again:
                    conn.execute(update(connections).where(connections.c.id.in_(again))
                                 .values(tracked=True, tracked_at=at))
                added += len(new)
                retracked += len(again)
        return TrackResult(added=added, retracked=retracked, unchanged=len(ids) - added - retracked)

    def untrack(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Stop polling ``ids``; rows and history stay. (How many were untracked, the ids that were unknown.)"""
        changed = 0
        unknown: list[str] = []
        with self._write() as conn:
            for chunk in _chunks(ids):
                known = set(conn.scalars(select(connections.c.id).where(connections.c.id.in_(chunk))))
                unknown += [i for i in chunk if i not in known]
                changed += conn.execute(
                    update(connections).where(connections.c.id.in_(known), connections.c.tracked.is_(True))
                    .values(tracked=False)
                ).rowcount
        return changed, unknown

    def connection_rows(self, *, include_untracked: bool = False) -> Iterator[dict[str, Any]]:
        """Connections with status, open permission count, last success and last error, streamed."""
        c = connections.c
        held = (
            select(permission_grants.c.connection_id, func.count().label("n"))
            .where(permission_grants.c.valid_to.is_(None))
            .group_by(permission_grants.c.connection_id)
            .subquery()
        )
        query = (
            select(c.id, c.status, c.tracked, c.user_id, c.vehicle_id, func.coalesce(held.c.n, 0).label("n"),
                   c.last_success_at, c.last_attempt_at, c.last_error)
            .outerjoin_from(connections, held, held.c.connection_id == c.id)
            .order_by(c.id)
        )
        if not include_untracked:
            query = query.where(c.tracked.is_(True))
        with self.read() as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                yield {"connection_id": row.id, "status": row.status, "tracked": bool(row.tracked),
                       "user_id": row.user_id, "vehicle_id": row.vehicle_id, "permissions": row.n,
                       "last_success_at": row.last_success_at, "last_attempt_at": row.last_attempt_at,
                       "last_error": row.last_error}

    # -- backfills --------------------------------------------------------------------------------

    def _interrupted(self, conn: Connection, source: BackfillSource, *, required: bool) -> Any:
        b = backfills.c
        row = conn.execute(
            select(backfills).where(b.kind == source.kind, b.fingerprint == source.fingerprint, b.status == "running")
            .order_by(b.id.desc()).limit(1)
        ).first()
        if required and row is None:
            msg = f"--resume: no interrupted backfill of {source.name} to resume"
            raise ConfigError(msg)
        return row

    def interrupted_backfill(self, source: BackfillSource) -> OpenBackfill:
        """The newest unfinished backfill of ``source``; ConfigError (exit 2) if there is none."""
        with self.read() as conn:
            row = self._interrupted(conn, source, required=True)
        return OpenBackfill(int(row.id), row.started_at, row.next_page or 1)

    def open_backfill(self, source: BackfillSource, *, resume: bool, at: dt.datetime) -> OpenBackfill:
        """The backfill to run: the interrupted one with ``resume``, else a new one (setting aside an old one)."""
        with self._write() as conn:
            row = self._interrupted(conn, source, required=resume)
            if resume:
                return OpenBackfill(int(row.id), row.started_at, row.next_page or 1)
            if row is not None:
                conn.execute(update(backfills).where(backfills.c.id == row.id).values(status="abandoned"))
            new_id = conn.execute(insert(backfills).values(
                kind=source.kind, source=source.name, fingerprint=source.fingerprint, total=source.total,
                started_at=at, status="running",
            ).returning(backfills.c.id)).scalar_one()
        return OpenBackfill(int(new_id), at, 1, set_aside=row.started_at if row is not None else None)

    def finish_backfill(self, backfill_id: int, *, at: dt.datetime, run_id: int | None = None) -> None:
        """Mark the backfill (or a sync listing's place) done."""
        values: dict[str, Any] = {"status": "done", "finished_at": at}
        if run_id is not None:
            values["last_run_id"] = run_id
        with self._write() as conn:
            conn.execute(update(backfills).where(backfills.c.id == backfill_id).values(**values))

    def listing_place(self, source: BackfillSource, *, at: dt.datetime) -> OpenBackfill:
        """Where a resumable listing stands: its unfinished row, else a new one at page 1."""
        with self._write() as conn:
            row = self._interrupted(conn, source, required=False)
            if row is not None:
                return OpenBackfill(int(row.id), row.started_at, row.next_page or 1)
            new_id = conn.execute(insert(backfills).values(
                kind=source.kind, source=source.name, fingerprint=source.fingerprint, total=None, started_at=at,
                status="running").returning(backfills.c.id)).scalar_one()
        return OpenBackfill(int(new_id), at, 1)

    # -- status -------------------------------------------------------------------------------------

    def recent_runs(self, limit: int) -> list[Any]:
        """The newest ``limit`` rows of ``sync_runs``, newest first."""
        with self.read() as conn:
            return list(conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)))

    def connections_by_status(self) -> tuple[dict[str, int], int]:
        """Tracked connections by status, and how many are untracked."""
        c = connections.c
        by_status = {"pending": 0, "active": 0, "deleted": 0}
        untracked = 0
        with self.read() as conn:
            for status, tracked, count in conn.execute(
                    select(c.status, c.tracked, func.count()).group_by(c.status, c.tracked)):
                if tracked:
                    by_status[status] = count
                else:
                    untracked += count
        return by_status, untracked

    def success_ages(self, *, at: dt.datetime, window: float) -> dict[str, Any]:
        """How fresh the mirror is: tracked ``pending``/``active`` connections, how many were never fetched,
        how many were fetched within ``window`` seconds, and the oldest, median and 95th-percentile last success.
        """
        c = connections.c
        live = (c.tracked.is_(True), c.status.in_(["pending", "active"]))
        fetched = (*live, c.last_success_at.is_not(None))
        with self.read() as conn:
            tracked = conn.scalar(select(func.count()).where(*live)) or 0
            seen = conn.scalar(select(func.count()).where(*fetched)) or 0
            fresh = conn.scalar(select(func.count()).where(
                *fetched, c.last_success_at >= at - dt.timedelta(seconds=window))) or 0

            def newest_but(share: float) -> dt.datetime | None:  # the success time older than ``share`` of them
                if not seen:
                    return None
                offset = min(seen - 1, int(share * seen))
                value: dt.datetime | None = conn.scalar(select(c.last_success_at).where(*fetched)
                                                        .order_by(c.last_success_at.desc()).offset(offset).limit(1))
                return value

            median, p95, oldest = newest_but(0.5), newest_but(0.95), newest_but(1.0)
        return {"tracked": tracked, "never_fetched": tracked - seen, "fresh": fresh, "oldest_success_at": oldest,
                "median_success_at": median, "p95_success_at": p95}

    def failing(self, limit: int) -> tuple[list[Any], int]:
        """The tracked connections whose last fetch failed (most failures in a row first), and how many in all."""
        c = connections.c
        failing = (c.tracked.is_(True), c.last_error.is_not(None))
        with self.read() as conn:
            rows = list(conn.execute(select(connections).where(*failing)
                                     .order_by(c.consecutive_failures.desc(), c.last_attempt_at.desc(), c.id)
                                     .limit(limit)))
            total = conn.scalar(select(func.count()).where(*failing)) or 0
        return rows, total


class BatchWriter:
    """Writes a run's batches: each in one transaction, with the run's counters and the backfill checkpoint."""

    def __init__(
        self,
        store: Store,
        run_id: int,
        cadence: Cadence,
        pass_started_at: dt.datetime | None,
        checkpoint: Callable[[], tuple[int, int | None] | None] | None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.cadence = cadence
        self.pass_started_at = pass_started_at
        self.checkpoint = checkpoint

    def write(self, outcomes: Sequence[Outcome]) -> BatchCounts:
        """Store the batch. If the database refuses it, store its connections one by one instead,
        so that only a connection whose rows are refused becomes a failed fetch (kind ``rejected``).
        A database that is unreachable raises DatabaseError: nothing more is written.
        """
        try:
            return self._transaction(outcomes, last=True)
        except EtlError:
            raise
        except Exception as error:  # a refused row (driver error, out-of-range value, bad text)
            log.warning("run %s: the database refused a batch of %d (%s); storing them one by one",
                        self.run_id, len(outcomes), one_line(error))
        counts = BatchCounts()
        for outcome in one_per_connection(outcomes):
            counts.add(self._one(outcome))
        if self.checkpoint is not None:
            with self.store._write() as conn:
                self._record_checkpoint(conn)
        return counts

    def _one(self, outcome: Outcome) -> BatchCounts:
        try:
            return self._transaction([outcome], last=False)
        except EtlError:
            raise
        except Exception as error:
            rejected = RowRejected(path=f"/connections/{outcome.connection_id}",
                                   detail=f"the database refused it: {one_line(error)}")
            log.warning("connection %s: %s", outcome.connection_id, rejected,
                        extra={"run_id": self.run_id, "connection_id": outcome.connection_id})
            return self._transaction([Failed(outcome.connection_id, outcome.observed_at, rejected)], last=False)

    def _transaction(self, outcomes: Sequence[Outcome], *, last: bool) -> BatchCounts:
        """Store the outcomes in one transaction; again, from the start, if the database rolled it back
        to break a deadlock (``dialects.error_kind``: ``retry``)."""
        attempt = 1
        while True:
            try:
                return self._attempt(outcomes, last=last)
            except exc.DBAPIError as error:
                if dialects.error_kind(error) != "retry" or attempt == BATCH_ATTEMPTS:
                    raise
                log.warning("run %s: the database rolled back a batch of %d (%s); running it again (attempt %d)",
                            self.run_id, len(outcomes), one_line(error), attempt + 1)
                time.sleep(RETRY_PAUSE * attempt)
                attempt += 1

    def _attempt(self, outcomes: Sequence[Outcome], *, last: bool) -> BatchCounts:
        with self.store._write(retried=True) as conn:
            counts = store_batch(conn=conn, run_id=self.run_id, outcomes=outcomes, cadence=self.cadence,
                                 pass_started_at=self.pass_started_at,
                                 archive=Archiving.KEEP if self.store.archive else Archiving.OFF)
            conn.execute(update(sync_runs).where(sync_runs.c.id == self.run_id).values(**_count_into_run(counts)))
            if last and self.checkpoint is not None:
                self._record_checkpoint(conn)
        return counts

    def _record_checkpoint(self, conn: Connection) -> None:
        assert self.checkpoint is not None
        place = self.checkpoint()
        if place is None:  # nothing to keep the place of (a pass that chose one GET per id)
            return
        backfill_id, next_page = place
        conn.execute(update(backfills).where(backfills.c.id == backfill_id)
                     .values(last_run_id=self.run_id, next_page=next_page))


def _count_into_run(counts: BatchCounts) -> dict[str, object]:
    c = sync_runs.c
    return {
        "connections_fetched": c.connections_fetched + counts.fetched,
        "connections_changed": c.connections_changed + counts.changed,
        "connections_deleted": c.connections_deleted + counts.deleted,
        "connections_failed": c.connections_failed + counts.failed,
        "permissions_granted": c.permissions_granted + counts.granted,
        "permissions_revoked": c.permissions_revoked + counts.revoked,
        "fields_nulled": c.fields_nulled + counts.nulled,
    }

