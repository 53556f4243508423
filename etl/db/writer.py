"""The BatchWriter: a run's batches, each in one transaction with the run's counters and checkpoint."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection, exc, update

from etl.cadence import Cadence
from etl.db.archive import Archiving
from etl.db.batch import one_per_connection, store_batch
from etl.db.models import backfills, sync_runs
from etl.errors import EtlError, RowRejected, one_line
from etl.outcomes import BatchCounts, Failed, Outcome

if TYPE_CHECKING:
    from etl.db.store import Store

log = logging.getLogger("etl.db.store")
# A batch whose transaction lost a lock race (a deadlock) is rolled back whole; it runs again this many
# times in all, after these pauses (seconds), before it counts as refused.
BATCH_ATTEMPTS = 3
RETRY_PAUSE = 0.05


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
        to break a deadlock (``Database.error_kind``: ``retry``)."""
        attempt = 1
        while True:
            try:
                return self._attempt(outcomes, last=last)
            except exc.DBAPIError as error:
                if self.store.dialect.error_kind(error) != "retry" or attempt == BATCH_ATTEMPTS:
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

