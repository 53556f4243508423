"""Store one batch of fetch outcomes in one transaction, with set-based statements.

For a batch: two SELECTs (prior connection state, open grants), one upsert per
table (users, vehicles, connections), one executemany each for deletions,
closed grants, opened grants, changes, failures. No per-row ORM work.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, Engine, bindparam, select, update

from etl.api.documents import ConnectionRecord
from etl.cadence import Cadence
from etl.db.engine import translate_errors
from etl.db.models import (
    connections,
    fetch_errors,
    permission_changes,
    permission_grants,
    sync_runs,
    users,
    vehicles,
)
from etl.db.upsert import upsert
from etl.errors import ApiError, EtlError, RowRejected, one_line
from etl.history import Observation, diff

MAX_ERROR_TEXT = 500
DEFAULT_CADENCE = Cadence()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """The API returned the connection."""

    connection_id: str
    observed_at: dt.datetime
    record: ConnectionRecord


@dataclass(frozen=True)
class Gone:
    """The API answered 404: the connection no longer exists."""

    connection_id: str
    observed_at: dt.datetime


@dataclass(frozen=True)
class Failed:
    """The fetch failed (retries exhausted, malformed document, other 4xx)."""

    connection_id: str
    observed_at: dt.datetime
    error: ApiError


Outcome = Fetched | Gone | Failed


@dataclass
class BatchCounts:
    """What a batch (or a run) stored."""

    fetched: int = 0
    changed: int = 0
    deleted: int = 0
    failed: int = 0
    granted: int = 0
    revoked: int = 0
    nulled: int = 0  # descriptive fields stored as NULL (a value no column can hold)

    def add(self, other: BatchCounts) -> None:
        """Add another batch's counts to these."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def error_text(error: ApiError) -> str:
    """The error as stored in ``connections.last_error`` and ``fetch_errors.detail``."""
    text = str(error)
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def _latest(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """One outcome per connection (the last), so that no statement touches a row twice."""
    return list({o.connection_id: o for o in outcomes}.values())


def _after(outcome: Outcome, previous: dt.datetime | None) -> Outcome:
    """The outcome, observed strictly after ``previous``.

    If the clock stepped back (an NTP correction) since the previous fetch, the
    observation is placed 1 µs after it, so that intervals never run backwards.
    """
    if previous is None or outcome.observed_at > previous or isinstance(outcome, Failed):
        return outcome
    log.warning("clock is behind the previous observation of %s (%s <= %s); using %s + 1 µs",
                outcome.connection_id, outcome.observed_at, previous, previous)
    return replace(outcome, observed_at=previous + dt.timedelta(microseconds=1))


def store_batch(
    *,
    conn: Connection,
    run_id: int | None,
    outcomes: Sequence[Outcome],
    cadence: Cadence = DEFAULT_CADENCE,
    pass_started_at: dt.datetime | None = None,
) -> BatchCounts:
    """Write a batch; the caller owns the transaction (one per batch).

    ``cadence`` and ``pass_started_at`` set when each connection is due again.
    A connection not seen before (from a listing) is stored as tracked.
    """
    outcomes = _latest(outcomes)
    answered = [o.connection_id for o in outcomes if not isinstance(o, Failed)]

    previous: dict[str, dt.datetime | None] = {}
    failures: dict[str, int] = {}
    held: dict[str, set[str]] = {}
    if outcomes:
        rows = conn.execute(
            select(connections.c.id, connections.c.last_success_at, connections.c.consecutive_failures)
            .where(connections.c.id.in_([o.connection_id for o in outcomes]))
        )
        for state in rows:
            previous[state.id] = state.last_success_at
            failures[state.id] = state.consecutive_failures
        outcomes = [_after(o, previous.get(o.connection_id)) for o in outcomes]
    if answered:
        for row in conn.execute(
            select(permission_grants.c.connection_id, permission_grants.c.permission).where(
                permission_grants.c.connection_id.in_(answered), permission_grants.c.valid_to.is_(None)
            )
        ):
            held.setdefault(row.connection_id, set()).add(row.permission)
    fetched = [o for o in outcomes if isinstance(o, Fetched)]
    gone = [o for o in outcomes if isinstance(o, Gone)]
    failed = [o for o in outcomes if isinstance(o, Failed)]

    _upsert_entities(conn, fetched, cadence=cadence, pass_started_at=pass_started_at)

    if gone:
        conn.execute(
            update(connections)
            .where(connections.c.id == bindparam("b_id"))
            .values(status="deleted", last_success_at=bindparam("b_at"), last_attempt_at=bindparam("b_at"),
                    last_error=None, consecutive_failures=0, next_due_at=bindparam("b_due")),
            [{"b_id": o.connection_id, "b_at": o.observed_at, "b_due": cadence.after_gone(o.observed_at)}
             for o in gone],
        )

    observations = [
        Observation(o.connection_id, o.observed_at, o.record.permissions, o.record.source_updated_at)
        for o in fetched
    ] + [Observation(o.connection_id, o.observed_at, None) for o in gone if o.connection_id in previous]
    delta = diff(observations, held=held, previous_observed_at=previous, run_id=run_id)
    if delta.close_grants:
        conn.execute(
            update(permission_grants)
            .where(
                permission_grants.c.connection_id == bindparam("b_connection_id"),
                permission_grants.c.permission == bindparam("b_permission"),
                permission_grants.c.valid_to.is_(None),
            )
            .values(valid_to=bindparam("b_valid_to")),
            delta.close_grants,
        )
    if delta.open_grants:
        conn.execute(permission_grants.insert(), delta.open_grants)
    if delta.changes:
        conn.execute(permission_changes.insert(), delta.changes)

    unknown = [o for o in failed if o.connection_id not in previous]
    if unknown:  # first seen in a listing, already malformed: a pending row carries its error
        upsert(conn=conn, table=connections, key=["id"], update=[], rows=[
            {"id": o.connection_id, "status": "pending", "tracked": True, "tracked_at": o.observed_at}
            for o in unknown])
    if failed and run_id is not None:
        conn.execute(fetch_errors.insert(), [
            {"run_id": run_id, "connection_id": o.connection_id, "occurred_at": o.observed_at,
             "kind": o.error.kind, "http_status": o.error.status, "detail": error_text(o.error)}
            for o in failed
        ])
    if failed:
        conn.execute(
            update(connections)
            .where(connections.c.id == bindparam("b_id"))
            .values(last_attempt_at=bindparam("b_at"), last_error=bindparam("b_error"),
                    consecutive_failures=bindparam("b_failures"), next_due_at=bindparam("b_due")),
            [
                {"b_id": o.connection_id, "b_at": o.observed_at, "b_error": error_text(o.error),
                 "b_failures": failures.get(o.connection_id, 0) + 1,
                 "b_due": cadence.after_failure(o.observed_at, failures.get(o.connection_id, 0) + 1)}
                for o in failed
            ],
        )
    return BatchCounts(
        fetched=len(fetched), changed=len(delta.changed_connections), deleted=len(gone),
        failed=len(failed), granted=delta.granted, revoked=delta.revoked,
        nulled=sum(len(o.record.nulled) for o in fetched),
    )


def _upsert_entities(
    conn: Connection,
    fetched: Sequence[Fetched],
    *,
    cadence: Cadence,
    pass_started_at: dt.datetime | None,
) -> None:
    """Upsert users, vehicles and connections for the fetched records, one statement each."""
    if not fetched:
        return
    user_rows: dict[str, dict[str, object]] = {}
    vehicle_rows: dict[str, dict[str, object]] = {}
    for o in sorted(fetched, key=lambda o: o.observed_at):  # later observations win
        r = o.record
        first = user_rows.get(r.user_id, {}).get("first_seen_at", o.observed_at)
        user_rows[r.user_id] = {"id": r.user_id, "first_seen_at": first, "last_seen_at": o.observed_at}
        first = vehicle_rows.get(r.vehicle_id, {}).get("first_seen_at", o.observed_at)
        vehicle_rows[r.vehicle_id] = {
            "id": r.vehicle_id, "make": r.vehicle.make, "model": r.vehicle.model, "year": r.vehicle.year,
            "mode": r.vehicle.mode, "powertrain_type": r.vehicle.powertrain_type,
            "first_seen_at": first, "last_seen_at": o.observed_at,
        }
    upsert(conn=conn, table=users, rows=list(user_rows.values()), key=["id"], update=["last_seen_at"])
    upsert(
        conn=conn, table=vehicles, rows=list(vehicle_rows.values()), key=["id"],
        update=["make", "model", "year", "mode", "powertrain_type", "last_seen_at"],
    )
    upsert(
        conn=conn,
        table=connections,
        rows=[
            {
                "id": o.connection_id, "user_id": o.record.user_id, "vehicle_id": o.record.vehicle_id,
                "status": "active", "tracked": True, "tracked_at": o.observed_at,
                "source_created_at": o.record.source_created_at,
                "source_updated_at": o.record.source_updated_at,
                "first_seen_at": o.observed_at, "last_seen_at": o.observed_at,
                "last_success_at": o.observed_at, "last_attempt_at": o.observed_at, "last_error": None,
                "consecutive_failures": 0, "next_due_at": cadence.after_success(pass_started_at or o.observed_at),
            }
            for o in fetched
        ],
        key=["id"],
        update=["user_id", "vehicle_id", "status", "source_created_at", "source_updated_at",
                "last_seen_at", "last_success_at", "last_attempt_at", "last_error",
                "consecutive_failures", "next_due_at"],
        keep_existing=["first_seen_at"],
    )


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


@dataclass(frozen=True)
class BatchWriter:
    """Writes a run's batches: each in one transaction, with the run's counters and an optional checkpoint.

    ``on_batch`` runs inside the transaction that completes a batch (a checkpoint, say).
    """

    engine: Engine
    run_id: int
    cadence: Cadence = DEFAULT_CADENCE
    pass_started_at: dt.datetime | None = None
    on_batch: Callable[[Connection, BatchCounts], None] | None = None

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
        for outcome in _latest(outcomes):
            try:
                counts.add(self._transaction([outcome], last=False))
            except EtlError:
                raise
            except Exception as error:
                rejected = RowRejected(path=f"/connections/{outcome.connection_id}",
                                       detail=f"the database refused it: {one_line(error)}")
                log.warning("connection %s: %s", outcome.connection_id, rejected,
                            extra={"run_id": self.run_id, "connection_id": outcome.connection_id})
                failed = Failed(outcome.connection_id, outcome.observed_at, rejected)
                counts.add(self._transaction([failed], last=False))
        if self.on_batch is not None:
            with translate_errors(self.engine), self.engine.begin() as conn:
                self.on_batch(conn, counts)
        return counts

    def _transaction(self, outcomes: Sequence[Outcome], *, last: bool) -> BatchCounts:
        with translate_errors(self.engine), self.engine.begin() as conn:
            counts = store_batch(conn=conn, run_id=self.run_id, outcomes=outcomes, cadence=self.cadence,
                                 pass_started_at=self.pass_started_at)
            conn.execute(update(sync_runs).where(sync_runs.c.id == self.run_id).values(**_count_into_run(counts)))
            if last and self.on_batch is not None:
                self.on_batch(conn, counts)
        return counts
