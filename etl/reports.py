"""Canned reports and the point-in-time query, on every supported database.

The point-in-time rule: a connection held a permission at instant T when a
grant interval covers T, i.e. ``valid_from <= T`` and (``valid_to`` is NULL or
``valid_to > T``). Timestamps are bound through the column type, so the same
query is exact on SQLite (UTC text), PostgreSQL (timestamptz) and MariaDB (UTC DATETIME(6)).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, and_, case, func, or_, select

from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, permission_changes, permission_grants, vehicles

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
