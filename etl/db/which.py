"""The Store's questions about connections: which are due, known, live or missing, tracking them, and how
fresh the mirror is."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from etl.db.models import connections, permission_grants
from etl.db.transactions import Transactions
from etl.errors import ConfigError

CHUNK = 500  # ids per statement: well under SQLite's limit on bound parameters


@dataclass(frozen=True)
class TrackResult:
    """How many ids were new, tracked again, or already tracked."""

    added: int
    retracked: int
    unchanged: int


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def _refuse_foreign(rows: Iterable[Any], mine: str) -> None:
    """ConfigError (exit 2) naming the ids that belong to another application than ``mine``, and both."""
    foreign = [(row.id, row.application) for row in rows if row.application != mine]
    if foreign:
        shown = ", ".join(f"{i} (application {app})" for i, app in foreign[:5])
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        msg = (f"{len(foreign)} id(s) belong to another application than {mine}: {shown}{more}; nothing was "
               f"tracked (if they are {mine}'s, `smartcar-etl connections move ID... --application {mine}`)")
        raise ConfigError(msg)


def _healthy() -> ColumnElement[bool]:
    """An active connection whose last fetch succeeded: due one (current) interval after it, at the latest."""
    return and_(connections.c.status == "active", connections.c.consecutive_failures == 0)


class ConnectionQueries(Transactions):
    """Which connections: due, known, live, missing; track and untrack; status counts."""

    def due_ids(self, *, at: dt.datetime, ignore_due: bool = False, fetched_before: dt.datetime | None = None,
                ) -> list[str]:
        """Tracked connection ids that are due at ``at`` (every tracked one with ``ignore_due``), most overdue first.

        ``fetched_before``: a healthy active connection last fetched before then is due too, whatever
        due time an earlier, longer ``schedule.interval`` gave it (a shorter interval applies at once).
        """
        c = connections.c
        # Most overdue first: never attempted, then by due time, so a pass cut short by --max-duration
        # leaves the freshest for later and never fetches one twice while another waits.
        query = select(c.id).where(c.tracked.is_(True), self.mine(c.application)).order_by(
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
                       func.min(case((_healthy(), c.last_attempt_at)))).where(c.tracked.is_(True),
                                                                                 self.mine(c.application))
        with self.read() as conn:
            tracked, timed, earliest, oldest_healthy = conn.execute(query).one()
        if timed < tracked:
            return tracked, None
        if oldest_healthy is not None and earliest is not None:
            earliest = min(earliest, oldest_healthy + fetched_within)
        return tracked, earliest

    def stored_applications(self) -> dict[str, int]:
        """Every application the database holds connections of, with how many."""
        c = connections.c
        with self.read() as conn:
            return {name: count for name, count in conn.execute(
                select(c.application, func.count()).group_by(c.application))}

    def application_of(self, connection_id: str) -> str | None:
        """The application the connection belongs to, or None for one the database does not hold."""
        with self.read() as conn:
            found: str | None = conn.scalar(select(connections.c.application).where(connections.c.id == connection_id))
        return found

    def known_connections(self) -> int:
        """How many connections the database knows that are not deleted: a lower bound of the application's size."""
        with self.read() as conn:
            return conn.scalar(select(func.count()).where(connections.c.status != "deleted",
                                                          self.mine(connections.c.application))) or 0

    def live_ids(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` whose connection is ``active`` or ``pending`` (a 404 would make them ``deleted``)."""
        live: set[str] = set()
        with self.read() as conn:
            for chunk in _chunks(ids):
                live.update(conn.scalars(select(connections.c.id).where(
                    self.dialect.among(connections.c.id, chunk), connections.c.status.in_(("active", "pending")))))
        return live

    def untracked_ids(self) -> set[str]:
        """The connections the user untracked (few: the listing skips them)."""
        with self.read() as conn:
            return set(conn.scalars(select(connections.c.id).where(connections.c.tracked.is_(False),
                                                                   self.mine(connections.c.application))))

    def owners(self, ids: Sequence[str]) -> dict[str, str]:
        """Which of ``ids`` the database holds, each with the application it belongs to."""
        c = connections.c
        with self.read() as conn:
            return dict(conn.execute(select(c.id, c.application).where(self.dialect.among(c.id, list(ids)))).all())

    def missing_from(self, seen: Collection[str], *, since: dt.datetime | None = None) -> list[str]:
        """Tracked pending or active connections not in ``seen`` (and, with ``since``, not attempted since then)."""
        c = connections.c
        query = select(c.id).where(c.tracked.is_(True), c.status.in_(["pending", "active"]), self.mine(c.application))
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
        """Start tracking ``ids`` (already canonical) under this store's application; untracked ones are tracked
        again. One transaction: an id that belongs to another application is ConfigError (exit 2) naming both,
        and nothing is tracked."""
        added = retracked = 0
        mine = self.writing_as
        with self._write() as conn:
            for chunk in _chunks(ids):
                known = {row.id: row for row in conn.execute(select(
                    connections.c.id, connections.c.tracked, connections.c.application).where(
                    connections.c.id.in_(chunk)))}
                _refuse_foreign(known.values(), mine)
                new = [{"id": i, "status": "pending", "tracked": True, "tracked_at": at, "application": mine}
                       for i in chunk if i not in known]
                self.dialect.upsert(conn=conn, table=connections, key=["id"], update=[], rows=new)
                again = [i for i, row in known.items() if not row.tracked]
                if again:
                    conn.execute(update(connections).where(connections.c.id.in_(again))
                                 .values(tracked=True, tracked_at=at))
                added += len(new)
                retracked += len(again)
        return TrackResult(added=added, retracked=retracked, unchanged=len(ids) - added - retracked)

    def move(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Move ``ids`` to this store's application (tracked under the wrong one), due at once. (How many moved,
        the unknown.)"""
        moved = 0
        unknown: list[str] = []
        with self._write() as conn:
            for chunk in _chunks(ids):
                known = set(conn.scalars(select(connections.c.id).where(connections.c.id.in_(chunk))))
                unknown += [i for i in chunk if i not in known]
                moved += conn.execute(update(connections).where(
                    connections.c.id.in_(known), connections.c.application != self.writing_as)
                    .values(application=self.writing_as, next_due_at=None)).rowcount  # due at once, with its token
        return moved, unknown

    def untrack(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        """Stop polling ``ids``; rows and history stay. (How many were untracked, the ids that were unknown.)"""
        changed = 0
        unknown: list[str] = []
        with self._write() as conn:
            for chunk in _chunks(ids):
                known = set(conn.scalars(select(connections.c.id).where(
                    connections.c.id.in_(chunk), self.mine(connections.c.application))))
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
            select(c.id, c.application, c.status, c.tracked, c.user_id, c.vehicle_id,
                   func.coalesce(held.c.n, 0).label("n"), c.last_success_at, c.last_attempt_at, c.last_error)
            .outerjoin_from(connections, held, held.c.connection_id == c.id)
            .where(self.mine(c.application))
            .order_by(c.id)
        )
        if not include_untracked:
            query = query.where(c.tracked.is_(True))
        with self.read() as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                yield {"connection_id": row.id, "application": row.application, "status": row.status,
                       "tracked": bool(row.tracked),
                       "user_id": row.user_id, "vehicle_id": row.vehicle_id, "permissions": row.n,
                       "last_success_at": row.last_success_at, "last_attempt_at": row.last_attempt_at,
                       "last_error": row.last_error}

    def permission_holders(self, limit: int) -> tuple[list[tuple[str, int]], int]:
        """How many ``active`` connections hold each permission (an open grant): the ``limit`` most held (ties by
        name), and how many permissions active connections hold in all (one query)."""
        c, g = connections.c, permission_grants.c
        holders = func.count()
        query = (select(g.permission, holders, func.count().over())  # the window counts the groups, before LIMIT
                 .join_from(permission_grants, connections, c.id == g.connection_id)
                 .where(g.valid_to.is_(None), c.status == "active", self.mine(c.application))
                 .group_by(g.permission).order_by(holders.desc(), g.permission).limit(limit))
        with self.read() as conn:
            rows = list(conn.execute(query))
        return [(row[0], int(row[1])) for row in rows], int(rows[0][2]) if rows else 0

    def connections_by_status(self) -> tuple[dict[str, int], int]:
        """Tracked connections by status, and how many are untracked."""
        c = connections.c
        by_status = {"pending": 0, "active": 0, "deleted": 0}
        untracked = 0
        with self.read() as conn:
            for status, tracked, count in conn.execute(
                    select(c.status, c.tracked, func.count()).where(self.mine(c.application))
                    .group_by(c.status, c.tracked)):
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
        live = (c.tracked.is_(True), c.status.in_(["pending", "active"]), self.mine(c.application))
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
        failing = (c.tracked.is_(True), c.last_error.is_not(None), self.mine(c.application))
        with self.read() as conn:
            rows = list(conn.execute(select(connections).where(*failing)
                                     .order_by(c.consecutive_failures.desc(), c.last_attempt_at.desc(), c.id)
                                     .limit(limit)))
            total = conn.scalar(select(func.count()).where(*failing)) or 0
        return rows, total
