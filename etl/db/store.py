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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy import delete, func, select, update

from etl.cadence import Cadence
from etl.db.archive import Archived, archived_at, settle
from etl.db.batch import DEFAULT_CADENCE
from etl.db.budget import Bucket, Lease, RateBudget
from etl.db.dialects import IMMEDIATE
from etl.db.engine import current_revision, require_migrated, translate_errors, upgrade
from etl.db.models import application_firings, backfills, connections, rate_budgets, sync_runs
from etl.db.rebuild import RebuildResult, rebuild, uncovered
from etl.db.runs import BackfillSource, FinishedRun, OpenBackfill, RunBookkeeping
from etl.db.transactions import Transactions
from etl.db.which import ConnectionQueries, TrackResult
from etl.db.writer import BatchWriter
from etl.errors import ConfigError, DatabaseError, EtlError

__all__ = ["BackfillSource", "BatchWriter", "Bucket", "FinishedRun", "Lease", "OpenBackfill", "Store", "TrackResult"]


class Store(RunBookkeeping, RateBudget, ConnectionQueries, Transactions):
    """The database of one job: its engine, and a verb for everything the job reads or writes.

    Its verbs live in parts by what they do: ``Transactions`` (the engine, ``read``, ``_write``),
    ``RunBookkeeping`` (runs and backfills), ``RateBudget`` (the shared token bucket), ``ConnectionQueries``
    (which connections; tracking; status counts); the batches are written by ``BatchWriter``.
    """

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
        """Hold the run lock of this store's application in this database, or raise LockHeld (exit 4) naming the
        run that has it."""
        with translate_errors(self.engine), self.dialect.run_lock(
                self.engine, url=self.url, name=self.writing_as, holder=self.lock_holder):
            yield

    @contextmanager
    def every_lock(self) -> Iterator[None]:
        """Hold the run lock of every application the database holds (and this store's): nothing else runs."""
        names = sorted({*self.stored_applications(), self.writing_as})
        with ExitStack() as stack:
            for name in names:
                stack.enter_context(self.scoped(name).lock())
            yield

    def lock_holder(self) -> str:
        """The run that holds the lock, as its ``running`` row tells (best effort)."""
        r = sync_runs.c
        try:
            with self.read() as conn:
                row = conn.execute(select(r.id, r.trigger, r.started_at, r.pid, r.host)
                                   .where(r.status == "running", r.application == self.writing_as)
                                   .order_by(r.id.desc()).limit(1)).first()
        except EtlError:  # the description must never hide the LockHeld itself
            row = None
        if row is None:
            return "a run that has not recorded itself yet"
        where = f", pid {row.pid}" + (f" on {row.host}" if row.host else "") if row.pid else ""
        return f"run {row.id} ({row.trigger}, started {row.started_at:%Y-%m-%d %H:%M:%S} UTC{where})"

    # -- applications ---------------------------------------------------------------------------

    def rename_application(self, old: str, new: str) -> int:
        """Give application ``old``'s rows (connections, runs, backfills, its bucket, its schedule's firings)
        to ``new``, under both run locks, in one transaction; merged into ``new``'s where it has rows. How
        many connections moved."""
        with self.scoped(old).lock(), self.scoped(new).lock(), self._write() as conn:
            moved = conn.execute(update(connections).where(connections.c.application == old)
                                 .values(application=new)).rowcount
            for table in (sync_runs, backfills):
                conn.execute(update(table).where(table.c.application == old).values(application=new))
            for table, column in ((rate_budgets, rate_budgets.c.key), (application_firings,
                                                                       application_firings.c.application)):
                if conn.scalar(select(func.count()).select_from(table).where(column == new)):
                    conn.execute(delete(table).where(column == old))
                else:
                    conn.execute(update(table).where(column == old).values({column.name: new}))
        return int(moved)

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
        """Derive the history again from the archive (``etl.db.rebuild``), under every run lock, in one
        transaction; with ``dry_run`` it is rolled back. ConfigError (exit 2), naming them, when some
        connections have observations the archive does not hold; ``UnverifiableArchive`` (exit 2) when a body
        cannot be verified. Either way nothing changes."""
        with self.every_lock(), translate_errors(self.engine), self.engine.connect() as conn:
            conn.execution_options(**{IMMEDIATE: True})
            with conn.begin() as transaction:
                settle(conn)
                shown, total = uncovered(conn)
                if total:
                    more = f" and {total - len(shown)} more" if total > len(shown) else ""
                    msg = (f"the archive does not hold every observation of {total} connection(s) "
                           f"({', '.join(shown)}{more}), e.g. from a time when archive.enabled was off; "
                           "nothing was rebuilt (see docs/archive.md)")
                    raise ConfigError(msg)
                result = rebuild(conn)
                if dry_run:
                    transaction.rollback()
        return result
