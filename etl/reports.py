"""Canned reports and the point-in-time query, on every supported database.

The point-in-time rule: a connection held a permission at instant T when a
grant interval covers T, i.e. ``valid_from <= T`` and (``valid_to`` is NULL or
``valid_to > T``). Timestamps are bound through the column type, so the same
query is exact on SQLite (UTC text), PostgreSQL (timestamptz) and MariaDB (UTC DATETIME(6)).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, case, func, literal, or_, select, union_all

from etl.db.dialects import dialect_for
from etl.db.engine import require_migrated, translate_errors
from etl.db.models import CHANGE_KINDS, connections, permission_changes, permission_grants, vehicles
from etl.errors import ConfigError

PERMISSIONS_COLUMNS = ("application", "connection_id", "user_id", "vehicle_id", "make", "model", "permission",
                       "granted_since", "status", "known")
CHANGES_COLUMNS = ("observed_at", "change", "kind", "permission", "application", "connection_id", "user_id",
                   "vehicle_id", "make", "model", "previous_observed_at")
FLEET_COLUMNS = ("application", "make", "powertrain_type", "mode", "status", "connections")


def _of(query: Any, applications: Sequence[str] | None) -> Any:
    """``query`` limited to the connections of ``applications`` (None: every application)."""
    return query if applications is None else query.where(connections.c.application.in_(applications))


def permissions_at(engine: Engine, at: dt.datetime, *, permission: str | None = None,
                   applications: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Which connections held which permissions at instant ``at``, with user and vehicle (``known`` true); and,
    with ``known`` false and no permission, each connection that existed at ``at`` by the API's ``createdAt``
    but was first observed after it: what it held then is unknown."""
    require_migrated(engine)
    g, c, v = permission_grants.c, connections.c, vehicles.c
    held = (
        select(c.application, g.connection_id, c.user_id, c.vehicle_id, v.make, v.model, g.permission,
               g.valid_from.label("granted_since"), c.status)
        .join(connections, c.id == g.connection_id)
        .outerjoin(vehicles, v.id == c.vehicle_id)
        .where(g.valid_from <= at, or_(g.valid_to.is_(None), g.valid_to > at))
    )
    if permission is not None:
        held = held.where(g.permission == permission)
    unknown = (
        select(c.application, c.id.label("connection_id"), c.user_id, c.vehicle_id, v.make, v.model, c.status)
        .outerjoin(vehicles, v.id == c.vehicle_id)
        .where(c.source_created_at <= at, c.first_seen_at > at)
    )
    with translate_errors(engine), engine.connect() as conn:
        rows = [{**row._mapping, "known": True} for row in conn.execute(_of(held, applications))]
        rows += [{**row._mapping, "permission": None, "granted_since": None, "known": False}
                 for row in conn.execute(_of(unknown, applications))]
    return sorted(rows, key=lambda r: (r["connection_id"], r["permission"] or ""))


def coverage_note(engine: Engine, at: dt.datetime, *, applications: Sequence[str] | None = None) -> str:
    """One line saying from when the mirror knows what ``permissions_at(at)`` answers, and what it cannot say."""
    c = connections.c
    before = and_(c.source_created_at <= at, c.first_seen_at > at)
    undated = and_(c.source_created_at.is_(None), or_(c.first_seen_at.is_(None), c.first_seen_at > at))
    query = select(func.min(c.first_seen_at), func.coalesce(func.sum(case((before, 1), else_=0)), 0),
                   func.coalesce(func.sum(case((undated, 1), else_=0)), 0))
    with translate_errors(engine), engine.connect() as conn:
        since, unknown, no_created = conn.execute(_of(query, applications)).one()
    parts = [f"history from {since:%Y-%m-%dT%H:%MZ}" if since is not None else "no history yet",
             f"{unknown} connection(s) existed at that time before they were first observed (known false: "
             "their permissions then are unknown)"]
    if no_created:
        parts.append(f"{no_created} connection(s) first observed later have no createdAt: whether they existed "
                     "then is unknown, and they are not listed")
    return "; ".join(parts)


def changes_between(
    engine: Engine, since: dt.datetime, until: dt.datetime | None = None, *, permission: str | None = None,
    applications: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Grants and revocations observed in [since, until), oldest first."""
    require_migrated(engine)
    pc, c, v = permission_changes.c, connections.c, vehicles.c
    query = (
        select(pc.observed_at, pc.change, pc.kind, pc.permission, c.application, pc.connection_id, c.user_id,
               c.vehicle_id, v.make, v.model, pc.previous_observed_at)
        .join(connections, c.id == pc.connection_id)
        .outerjoin(vehicles, v.id == c.vehicle_id)
        .where(pc.observed_at >= since)
        .order_by(pc.observed_at, pc.connection_id, pc.permission)
    )
    if until is not None:
        query = query.where(pc.observed_at < until)
    if permission is not None:
        query = query.where(pc.permission == permission)
    with translate_errors(engine), engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(_of(query, applications))]


def fleet(engine: Engine, *, applications: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Connections by application, make, powertrain, mode and status."""
    require_migrated(engine)
    c, v = connections.c, vehicles.c
    query = (
        select(c.application, v.make, v.powertrain_type, v.mode, c.status, func.count().label("connections"))
        .select_from(connections)
        .outerjoin(vehicles, v.id == c.vehicle_id)
        .group_by(c.application, v.make, v.powertrain_type, v.mode, c.status)
        .order_by(c.application, v.make, v.powertrain_type, v.mode, c.status)
    )
    with translate_errors(engine), engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(_of(query, applications))]


def changes_after_first_fetch(engine: Engine) -> list[Any]:
    """Every change that a later fetch found (not the first grants), with the vehicle's make and model."""
    c, v, pc = connections.c, vehicles.c, permission_changes.c
    with translate_errors(engine), engine.connect() as conn:
        return list(conn.execute(
            select(pc.observed_at, pc.change, pc.permission, v.make, v.model, pc.connection_id)
            .join(connections, c.id == pc.connection_id).join(vehicles, v.id == c.vehicle_id)
            .where(pc.previous_observed_at.is_not(None))
            .order_by(pc.observed_at, pc.connection_id, pc.permission)
        ).mappings().all())


def permissions_by_vehicle(engine: Engine) -> list[Any]:
    """(make, model, vehicle id, permission) for every permission held now."""
    c, v, g = connections.c, vehicles.c, permission_grants.c
    with translate_errors(engine), engine.connect() as conn:
        return list(conn.execute(
            select(v.make, v.model, v.id, g.permission)
            .join(connections, c.vehicle_id == v.id).join(permission_grants, g.connection_id == c.id)
            .where(g.valid_to.is_(None)).order_by(v.make, v.model, v.id, g.permission)
        ).all())


# -- the HTML page's figures: counted per period in SQL, on every database ------------------------------------------

PERIODS = {"day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}
MAX_PERIODS = 1000  # days or weeks on one page: past that its tables stop being something to read
FLEET_STATUSES = ("active", "pending", "deleted")


@dataclass(frozen=True)
class Window:
    """The page's time axis: ``since`` to ``until``, cut into UTC days or weeks (a week starts on Monday)."""

    since: dt.datetime
    until: dt.datetime
    period: str = "day"

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            msg = f"--bucket must be one of {', '.join(PERIODS)}, not {self.period[:20]!r}"
            raise ConfigError(msg)
        if self.until <= self.since:
            msg = "--until must be later than --since"
            raise ConfigError(msg)
        if self.since.year < 2 or self.until.year > 9998:  # the axis and its periods must stay within datetime's
            msg = "--since and --until must lie within the years 2 to 9998"
            raise ConfigError(msg)
        if self.periods > MAX_PERIODS:
            msg = (f"the window holds {self.periods} {self.period}s, more than {MAX_PERIODS}: shorten it "
                   "(--since, --until) or count by week (--bucket week)")
            raise ConfigError(msg)

    @property
    def step(self) -> dt.timedelta:
        """One period."""
        return PERIODS[self.period]

    @property
    def origin(self) -> dt.datetime:
        """The start of the period that holds ``since``: its UTC midnight, or its week's Monday."""
        midnight = self.since.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return midnight - dt.timedelta(days=midnight.weekday()) if self.period == "week" else midnight

    @property
    def periods(self) -> int:
        """How many periods [since, until) touches."""
        return -(-(self.until - self.origin) // self.step)  # rounded up

    def starts(self) -> list[dt.datetime]:
        """The start of each period that [since, until) touches."""
        return [self.origin + k * self.step for k in range(self.periods)]

    def instants(self) -> list[dt.datetime]:
        """Where the held permissions are counted: ``since``, each period boundary after it, and ``until``."""
        return [self.since] + [min(start + self.step, self.until) for start in self.starts()]


def held_over_time(engine: Engine, window: Window, *,
                   applications: Sequence[str] | None = None) -> dict[str, list[int]]:
    """For each permission, how many connections held it at each of ``window.instants()``: the grant
    intervals open there (``valid_from <= t < valid_to``), whether or not the connection was deleted since.

    One pass over the intervals that overlap the window: each adds one at the instant that first
    follows its start and takes it away at the one that first follows its end (in SQL, grouped by
    permission and instant); the running sum of those is the count at each instant.
    """
    require_migrated(engine)
    g, since, until = permission_grants.c, window.since, window.until
    # Instant j >= 1 is the first at or after a time t in (since, until]: ceil((t - origin) / step).
    after = window.origin + dt.timedelta(microseconds=1)

    def instant(column: Any) -> Any:
        return dialect_for(engine).steps_since(column, after, window.step) + 1

    opened = select(g.permission, case((g.valid_from <= since, 0), else_=instant(g.valid_from)).label("at"),
                    literal(1).label("delta")).where(g.valid_from <= until, or_(g.valid_to.is_(None),
                                                                                   g.valid_to > since))
    closed = select(g.permission, instant(g.valid_to).label("at"), literal(-1).label("delta")).where(
        g.valid_to > since, g.valid_to <= until)
    events = union_all(*(_grants_of(part, applications) for part in (opened, closed))).subquery()
    query = (select(events.c.permission, events.c.at, func.sum(events.c.delta))
             .group_by(events.c.permission, events.c.at))
    with translate_errors(engine), engine.connect() as conn:
        rows = conn.execute(query).all()
    held = {permission: [0] * (window.periods + 1) for permission in sorted({row[0] for row in rows})}
    for permission, at, delta in rows:
        held[permission][int(at)] += int(delta)
    for counts in held.values():
        for j in range(1, len(counts)):
            counts[j] += counts[j - 1]
    return held


def _grants_of(query: Any, applications: Sequence[str] | None) -> Any:
    """A query over ``permission_grants`` limited to the connections of ``applications`` (None: all, no join)."""
    if applications is None:
        return query
    return _of(query.join(connections, connections.c.id == permission_grants.c.connection_id), applications)


def changes_per_period(engine: Engine, window: Window, *,
                       applications: Sequence[str] | None = None) -> dict[str, list[int]]:
    """For each kind of change (first_seen, granted, revoked, disconnected, reconnected), how many were
    observed in each of ``window.starts()``'s periods, within [since, until). A change without a kind
    (older rows nothing could tell) counts as what it did: granted or revoked."""
    require_migrated(engine)
    pc = permission_changes.c
    kinds = (select(func.coalesce(pc.kind, pc.change).label("kind"),
                    dialect_for(engine).steps_since(pc.observed_at, window.origin, window.step).label("period"))
             .where(pc.observed_at >= window.since, pc.observed_at < window.until))
    if applications is not None:
        kinds = _of(kinds.join(connections, connections.c.id == pc.connection_id), applications)
    inner = kinds.subquery()
    query = select(inner.c.kind, inner.c.period, func.count()).group_by(inner.c.kind, inner.c.period)
    with translate_errors(engine), engine.connect() as conn:
        rows = conn.execute(query).all()
    counts = {kind: [0] * window.periods for kind in CHANGE_KINDS}
    for kind, period, count in rows:
        counts.setdefault(kind, [0] * window.periods)[int(period)] += int(count)
    return counts


def fleet_by_make(engine: Engine, *, applications: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Connections by vehicle make and powertrain, with a count for each status; most connections first."""
    require_migrated(engine)
    c, v = connections.c, vehicles.c
    by_status = [func.coalesce(func.sum(case((c.status == status, 1), else_=0)), 0).label(status)
                 for status in FLEET_STATUSES]
    query = (select(v.make, v.powertrain_type, *by_status).select_from(connections)
             .outerjoin(vehicles, v.id == c.vehicle_id).group_by(v.make, v.powertrain_type))
    with translate_errors(engine), engine.connect() as conn:
        rows = [{key: (int(value) if key in FLEET_STATUSES else value) for key, value in row._mapping.items()}
                for row in conn.execute(_of(query, applications))]
    return sorted(rows, key=lambda r: (-sum(r[s] for s in FLEET_STATUSES), r["make"] or "", r["powertrain_type"] or ""))


@dataclass(frozen=True)
class PageFigures:
    """Everything the HTML page shows, as counted by the database."""

    window: Window
    held: dict[str, list[int]]  # permission -> connections holding it at each of window.instants()
    changes: dict[str, list[int]]  # kind -> changes in each of window.starts()'s periods
    fleet: list[dict[str, Any]]  # fleet_by_make's rows
    coverage: str  # coverage_note at window.since


def page_figures(engine: Engine, window: Window, *, applications: Sequence[str] | None = None) -> PageFigures:
    """The HTML page's figures for ``window`` (``applications``: only theirs; None: every application)."""
    return PageFigures(window=window, held=held_over_time(engine, window, applications=applications),
                       changes=changes_per_period(engine, window, applications=applications),
                       fleet=fleet_by_make(engine, applications=applications),
                       coverage=coverage_note(engine, window.since, applications=applications))
