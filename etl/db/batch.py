"""Store one batch of fetch outcomes, with set-based statements (the caller owns the transaction).

For a batch: two SELECTs (prior connection state, open grants; the ids as one
parameter), one upsert per table (users, vehicles, connections), one
executemany each for deletions, closed grants, opened grants, changes,
failures. No per-row ORM work. What is unchanged is not written: users and
vehicles that are as stored (and seen within the day), and healthy connections
as stored, which only have their times refreshed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, update

from etl.api.documents import VEHICLE_FIELDS
from etl.cadence import Cadence
from etl.db.archive import Archiving, Before, archive_outcomes, current, with_current
from etl.db.dialects import dialect_for
from etl.db.models import (
    DEFAULT_APPLICATION,
    connections,
    fetch_errors,
    permission_changes,
    permission_grants,
    sync_runs,
    users,
    vehicles,
)
from etl.errors import ApiError
from etl.history import HistoryDelta, Observation, diff
from etl.outcomes import BatchCounts, Failed, Fetched, Gone, Outcome

MAX_ERROR_TEXT = 500
DEFAULT_CADENCE = Cadence()
log = logging.getLogger(__name__)


def error_text(error: ApiError) -> str:
    """The error as stored in ``connections.last_error`` and ``fetch_errors.detail``."""
    text = str(error)
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def one_per_connection(outcomes: Iterable[Outcome]) -> list[Outcome]:
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


@dataclass
class _Stored:
    """What the database holds of a batch's connections, read before anything is written."""

    previous: dict[str, dt.datetime | None] = field(default_factory=dict)  # last success (answer) of each
    failures: dict[str, int] = field(default_factory=dict)  # consecutive failures of each
    held: dict[str, set[str]] = field(default_factory=dict)  # open grants of each
    healthy: dict[str, tuple[object, ...]] = field(default_factory=dict)  # a healthy row's IDENTITY (``_as_stored``)
    deleted: set[str] = field(default_factory=set)  # stored as deleted: an answer now is a return
    before: Before = field(init=False)

    def __post_init__(self) -> None:
        self.before = Before(last_success=self.previous)


def store_batch(
    *,
    conn: Connection,
    run_id: int | None,
    outcomes: Sequence[Outcome],
    cadence: Cadence = DEFAULT_CADENCE,
    pass_started_at: dt.datetime | None = None,
    archive: Archiving = Archiving.KEEP,
) -> BatchCounts:
    """Write a batch; the caller owns the transaction (one per batch).

    Named steps: read what is stored, write what was fetched, write what is gone, write the history,
    write the failures, and archive. ``cadence`` and ``pass_started_at`` set when each connection is
    due again. A connection not seen before (from a listing) is stored as tracked. ``archive``: keep
    the documents too, or not (``etl.db.archive.Archiving``).
    """
    outcomes = one_per_connection(outcomes)
    stored = _read_stored(conn, outcomes, archive)
    outcomes = [_after(o, stored.previous.get(o.connection_id)) for o in outcomes]
    fetched = [o for o in outcomes if isinstance(o, Fetched)]
    gone = [o for o in outcomes if isinstance(o, Gone)]
    failed = [o for o in outcomes if isinstance(o, Failed)]
    seen_again = {o.connection_id for o in fetched if stored.healthy.get(o.connection_id) == _as_stored(o)}
    new = {"application": _run_application(conn, run_id)} if any(
        o.connection_id not in stored.previous for o in fetched) else {}
    _upsert_entities(conn, fetched, seen_again=seen_again, due=lambda at: cadence.after_success(pass_started_at or at),
                     new=new)
    _write_gone(conn, gone, cadence)
    delta = _write_history(conn, fetched, gone, stored, run_id)
    _write_failures(conn, failed, stored, cadence, run_id)
    archive_outcomes(conn, archive, run_id, outcomes, stored.before)
    return BatchCounts(
        fetched=len(fetched), changed=len(delta.changed_connections), deleted=len(gone),
        failed=len(failed), granted=delta.granted, revoked=delta.revoked,
        nulled=sum(len(o.record.nulled) for o in fetched),
    )


def _read_stored(conn: Connection, outcomes: Sequence[Outcome], archive: Archiving) -> _Stored:
    """The batch's two SELECTs: the connections' state (and current archive spans), and their open grants."""
    stored = _Stored()
    if not outcomes:
        return stored
    query = (select(connections.c.id, connections.c.last_success_at, connections.c.consecutive_failures,
                    *(connections.c[c] for c in IDENTITY))
             .where(dialect_for(conn).among(connections.c.id, [o.connection_id for o in outcomes])))
    for state in conn.execute(query if archive is Archiving.LEAVE else with_current(query)):
        if archive is not Archiving.LEAVE and (span := current(state)) is not None:
            stored.before.spans[state.id] = span
        stored.previous[state.id] = state.last_success_at
        stored.failures[state.id] = state.consecutive_failures
        if state.status == "deleted":
            stored.deleted.add(state.id)
        if state.consecutive_failures == 0:  # a failure sets last_error and counts; a success clears both
            stored.healthy[state.id] = tuple(getattr(state, c) for c in IDENTITY)
    answered = [o.connection_id for o in outcomes if not isinstance(o, Failed)]
    if answered:
        for row in conn.execute(
            select(permission_grants.c.connection_id, permission_grants.c.permission).where(
                dialect_for(conn).among(permission_grants.c.connection_id, answered),
                permission_grants.c.valid_to.is_(None),
            )
        ):
            stored.held.setdefault(row.connection_id, set()).add(row.permission)
    return stored


def _write_gone(conn: Connection, gone: Sequence[Gone], cadence: Cadence) -> None:
    """Connections the API answered 404 for: ``deleted``, re-checked on the cadence of deleted ones."""
    if not gone:
        return
    conn.execute(
        update(connections)
        .where(connections.c.id == bindparam("b_id"))
        .values(status="deleted", last_success_at=bindparam("b_at"), last_attempt_at=bindparam("b_at"),
                last_error=None, consecutive_failures=0, next_due_at=bindparam("b_due")),
        [{"b_id": o.connection_id, "b_at": o.observed_at, "b_due": cadence.after_gone(o.observed_at)} for o in gone],
    )


def _write_history(conn: Connection, fetched: Sequence[Fetched], gone: Sequence[Gone], stored: _Stored,
                   run_id: int | None) -> HistoryDelta:
    """The permission changes the answers show against the open grants: grants closed and opened, changes."""
    observations = [
        Observation(o.connection_id, o.observed_at, o.record.permissions, o.record.source_updated_at)
        for o in fetched
    ] + [Observation(o.connection_id, o.observed_at, None) for o in gone if o.connection_id in stored.previous]
    delta = diff(observations, held=stored.held, previous_observed_at=stored.previous, run_id=run_id,
                 deleted=stored.deleted)
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
    dialect_for(conn).insert_rows(conn, permission_grants, delta.open_grants)
    dialect_for(conn).insert_rows(conn, permission_changes, delta.changes)
    return delta


def _run_application(conn: Connection, run_id: int | None) -> str:
    """The application of the run: a connection first seen in a run (a listing) belongs to it."""
    found = conn.scalar(select(sync_runs.c.application).where(sync_runs.c.id == run_id)) if run_id else None
    return found or DEFAULT_APPLICATION


def _write_failures(conn: Connection, failed: Sequence[Failed], stored: _Stored, cadence: Cadence,
                    run_id: int | None) -> None:
    """Failed fetches: a ``fetch_errors`` row each, and the connection's last attempt, error and backoff."""
    if not failed:
        return
    unknown = [o for o in failed if o.connection_id not in stored.previous]
    if unknown:  # first seen in a listing, already malformed: a pending row carries its error
        dialect_for(conn).upsert(conn=conn, table=connections, key=["id"], update=[], rows=[
            {"id": o.connection_id, "status": "pending", "tracked": True, "tracked_at": o.observed_at,
             "application": _run_application(conn, run_id)} for o in unknown])
    if run_id is not None:
        conn.execute(fetch_errors.insert(), [
            {"run_id": run_id, "connection_id": o.connection_id, "occurred_at": o.observed_at,
             "kind": o.error.kind, "http_status": o.error.status, "detail": error_text(o.error)}
            for o in failed
        ])
    conn.execute(
        update(connections)
        .where(connections.c.id == bindparam("b_id"))
        .values(last_attempt_at=bindparam("b_at"), last_error=bindparam("b_error"),
                consecutive_failures=bindparam("b_failures"), next_due_at=bindparam("b_due")),
        [
            {"b_id": o.connection_id, "b_at": o.observed_at, "b_error": error_text(o.error),
             "b_failures": stored.failures.get(o.connection_id, 0) + 1,
             "b_due": cadence.after_failure(o.observed_at, stored.failures.get(o.connection_id, 0) + 1)}
            for o in failed
        ],
    )


# The connection columns a fetch can change besides the times; a healthy row whose IDENTITY is what the
# API shows again only has its times refreshed (``_refresh_times``).
IDENTITY = ("user_id", "vehicle_id", "status", "source_created_at", "source_updated_at")


def _as_stored(o: Fetched) -> tuple[object, ...]:
    """The IDENTITY columns as a fetch leaves them."""
    r = o.record
    return r.user_id, r.vehicle_id, "active", r.source_created_at, r.source_updated_at


def seen_day(first_seen_at: dt.datetime, sighting: dt.datetime) -> dt.datetime:
    """A user's or vehicle's ``last_seen_at`` for a sighting: the start (00:00 UTC) of its day, or the first
    sighting itself on that first day. A function of the first and the latest sighting only, so that
    ``rebuild``, which knows only when each archived version was first and last seen, gives the same."""
    day = sighting.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(first_seen_at, day)


def _worth_writing(
    conn: Connection, table: Table, rows: dict[str, dict[str, Any]], fields: Sequence[str]
) -> list[dict[str, Any]]:
    """The rows that are new, changed in ``fields``, or last seen on an earlier day than this sighting,
    with ``last_seen_at`` kept to the day (``seen_day``).

    An unchanged pass then writes no user or vehicle row at all (no WAL, no dead
    tuples): ``last_seen_at`` is exact to the day, which the connections' own
    ``last_seen_at`` (written anyway, for the schedule) makes up for.
    """
    stored = {row.id: row for row in conn.execute(
        select(table.c.id, table.c.first_seen_at, table.c.last_seen_at, *(table.c[f] for f in fields))
        .where(dialect_for(conn).among(table.c.id, list(rows))))}
    keep = []
    for key, row in rows.items():
        old = stored.get(key)
        row["last_seen_at"] = seen_day(row["first_seen_at"] if old is None else old.first_seen_at,
                                       row["last_seen_at"])
        if (old is None or any(getattr(old, f) != row[f] for f in fields)
                or old.last_seen_at < row["last_seen_at"]):
            keep.append(row)
    return keep


def _refresh_times(conn: Connection, fetched: Sequence[Fetched], due: Callable[[dt.datetime], dt.datetime]) -> None:
    """Connections seen again as they were: only their times change, one UPDATE per observation time.

    A page of the listing shares one time, so a whole page is one statement;
    the ids of a pass each have their own and go as one executemany.
    """
    by_time: dict[dt.datetime, list[str]] = {}
    for o in fetched:
        by_time.setdefault(o.observed_at, []).append(o.connection_id)
    if len(by_time) * 4 <= len(fetched):
        for at, ids in by_time.items():
            conn.execute(update(connections).where(dialect_for(conn).among(connections.c.id, ids)).values(
                last_seen_at=at, last_success_at=at, last_attempt_at=at, next_due_at=due(at)))
        return
    conn.execute(
        update(connections).where(connections.c.id == bindparam("b_id")).values(
            last_seen_at=bindparam("b_at"), last_success_at=bindparam("b_at"), last_attempt_at=bindparam("b_at"),
            next_due_at=bindparam("b_due")),
        [{"b_id": o.connection_id, "b_at": o.observed_at, "b_due": due(o.observed_at)} for o in fetched])


def _upsert_entities(
    conn: Connection,
    fetched: Sequence[Fetched],
    *,
    seen_again: set[str],
    due: Callable[[dt.datetime], dt.datetime],
    new: Mapping[str, str],
) -> None:
    """Upsert users, vehicles and connections for the fetched records, one statement each.

    ``new``: the columns a connection the database does not hold yet is inserted with (its application).

    The connections in ``seen_again`` are healthy rows that the API shows as
    stored: only their times are written (``_refresh_times``).
    """
    if not fetched:
        return
    user_rows: dict[str, dict[str, object]] = {}
    vehicle_rows: dict[str, dict[str, object]] = {}
    for o in sorted(fetched, key=lambda o: o.observed_at):  # later observations win
        r = o.record
        first = user_rows.get(r.user_id, {}).get("first_seen_at", o.observed_at)
        user_rows[r.user_id] = {"id": r.user_id, "first_seen_at": first, "last_seen_at": o.observed_at}
        first = vehicle_rows.get(r.vehicle_id, {}).get("first_seen_at", o.observed_at)
        vehicle_rows[r.vehicle_id] = {"id": r.vehicle_id, **asdict(r.vehicle), "first_seen_at": first,
                                      "last_seen_at": o.observed_at}
    upsert = dialect_for(conn).upsert
    upsert(conn=conn, table=users, rows=_worth_writing(conn, users, user_rows, ()), key=["id"],
           update=["last_seen_at"])
    upsert(conn=conn, table=vehicles, rows=_worth_writing(conn, vehicles, vehicle_rows, VEHICLE_FIELDS), key=["id"],
           update=[*VEHICLE_FIELDS, "last_seen_at"])
    _refresh_times(conn, [o for o in fetched if o.connection_id in seen_again], due)
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
                "consecutive_failures": 0, "next_due_at": due(o.observed_at), **new,
            }
            for o in fetched if o.connection_id not in seen_again
        ],
        key=["id"],
        update=["user_id", "vehicle_id", "status", "source_created_at", "source_updated_at",
                "last_seen_at", "last_success_at", "last_attempt_at", "last_error",
                "consecutive_failures", "next_due_at"],
        keep_existing=["first_seen_at"],
    )
