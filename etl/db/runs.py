"""The Store's run bookkeeping: the ``sync_runs`` rows, and the backfills (and listings) a run works on."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, func, insert, select, update

from etl.db.models import application_firings, backfills, sync_runs
from etl.db.transactions import Transactions
from etl.errors import ConfigError

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # "no firing taken yet"
log = logging.getLogger("etl.db.store")


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


class RunBookkeeping(Transactions):
    """Start, finish and list runs; open, resume and finish backfills."""

    def start_run(self, *, trigger: str, planned: int, at: dt.datetime) -> tuple[int, dt.datetime]:
        """Insert the ``sync_runs`` row (running, with this process's pid and host); (its id, its start)."""
        with self._write() as conn:
            run_id = conn.execute(
                insert(sync_runs)
                .values(trigger=trigger, started_at=at, status="running", connections_planned=planned,
                        pid=os.getpid(), host=socket.gethostname(), application=self.writing_as)
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
                update(sync_runs).where(sync_runs.c.status == "running", self.mine(sync_runs.c.application))
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
                select(func.max(sync_runs.c.finished_at)).where(sync_runs.c.status == "succeeded",
                                                                self.mine(sync_runs.c.application)))
        return last

    def recent_runs(self, limit: int) -> list[Any]:
        """The newest ``limit`` rows of ``sync_runs``, newest first."""
        with self.read() as conn:
            return list(conn.execute(select(sync_runs).where(self.mine(sync_runs.c.application))
                                     .order_by(sync_runs.c.id.desc()).limit(limit)))

    # -- backfills ---------------------------------------------------------------------------------

    def _interrupted(self, conn: Connection, source: BackfillSource, *, required: bool) -> Any:
        b = backfills.c
        row = conn.execute(
            select(backfills).where(b.kind == source.kind, b.fingerprint == source.fingerprint, b.status == "running",
                                    self.mine(b.application))
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
                started_at=at, status="running", application=self.writing_as,
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
                status="running", application=self.writing_as).returning(backfills.c.id)).scalar_one()
        return OpenBackfill(int(new_id), at, 1)

    # -- the daemons' firings ----------------------------------------------------------------------

    def claim_firing(self, firing: dt.datetime, *, claimer: str, at: dt.datetime) -> bool:
        """Take this application's schedule firing at ``firing`` for this daemon: True for exactly one of the
        daemons that ask (a conditional update: the firing is later than the last one taken)."""
        f = application_firings.c
        with self._write() as conn:
            self.dialect.upsert(conn=conn, table=application_firings, key=["application"], update=[], rows=[
                {"application": self.writing_as, "last_firing_at": EPOCH}])
            taken = conn.execute(update(application_firings).where(
                f.application == self.writing_as, f.last_firing_at < firing).values(
                last_firing_at=firing, claimed_by=claimer, claimed_at=at)).rowcount
        return bool(taken)
