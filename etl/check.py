"""Check the history invariants of the contract over the whole database.

Each rule is one query (or, for the order of changes, one ordered scan), and
every violation is reported with the rows it concerns:

- at most one open grant per connection and permission;
- no two intervals of a connection and permission overlap;
- every interval is matched by its changes: a ``granted`` at ``valid_from``
  and, if closed, a ``revoked`` at ``valid_to``; and every change by an interval;
- no open grant on a ``deleted`` connection;
- per connection and permission, changes go granted, revoked, granted, ...
  in strictly increasing ``observed_at``, each after its ``previous_observed_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Exists, and_, func, or_, select
from sqlalchemy.orm import aliased

from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, permission_changes, permission_grants

MAX_PER_RULE = 50  # violations listed per rule; the count is always exact


@dataclass
class CheckResult:
    """What ``check`` found."""

    grants: int = 0
    changes: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def check_history(engine: Engine) -> CheckResult:
    """Verify every history invariant; return the violations found (none: the history is sound)."""
    require_migrated(engine)
    result = CheckResult()
    with translate_errors(engine), engine.connect() as conn:
        result.grants = conn.scalar(select(func.count()).select_from(permission_grants)) or 0
        result.changes = conn.scalar(select(func.count()).select_from(permission_changes)) or 0
        _check_intervals(conn, result)
        _check_changes(conn, result)
    return result


def _report(result: CheckResult, rule: str, rows: Sequence[Sequence[Any]], describe: str) -> None:
    """Name each violation of ``rule`` (at most ``MAX_PER_RULE``, then how many more)."""
    for row in rows[:MAX_PER_RULE]:
        result.violations.append(f"{rule}: " + describe.format(*row))
    if len(rows) > MAX_PER_RULE:
        result.violations.append(f"{rule}: ... and {len(rows) - MAX_PER_RULE} more")


def _check_intervals(conn: Connection, result: CheckResult) -> None:
    """The grants: one open interval at a time, none overlapping, each with the changes that bound it."""
    g, pc, c = permission_grants.c, permission_changes.c, connections.c
    _report(result, "more than one open grant", conn.execute(
        select(g.connection_id, g.permission, func.count())
        .where(g.valid_to.is_(None)).group_by(g.connection_id, g.permission).having(func.count() > 1)
    ).all(), "connection {} holds {} in {} open intervals")
    a, b = aliased(permission_grants), aliased(permission_grants)
    _report(result, "overlapping intervals", conn.execute(
        select(a.c.connection_id, a.c.permission, a.c.valid_from, a.c.valid_to, b.c.valid_from)
        .join(b, and_(a.c.connection_id == b.c.connection_id, a.c.permission == b.c.permission,
                      a.c.valid_from < b.c.valid_from))
        .where(or_(a.c.valid_to.is_(None), a.c.valid_to > b.c.valid_from))
    ).all(), "connection {}, {}: interval from {} to {} overlaps the one from {}")

    def change_at(kind: str, when: Any) -> Exists:
        return select(pc.id).where(pc.connection_id == g.connection_id, pc.permission == g.permission,
                                   pc.change == kind, pc.observed_at == when).exists()

    _report(result, "interval without its granted change", conn.execute(
        select(g.connection_id, g.permission, g.valid_from).where(~change_at("granted", g.valid_from))
    ).all(), "connection {}, {}: no granted change at {}")
    _report(result, "interval without its revoked change", conn.execute(
        select(g.connection_id, g.permission, g.valid_to)
        .where(g.valid_to.is_not(None), ~change_at("revoked", g.valid_to))
    ).all(), "connection {}, {}: no revoked change at {}")
    _report(result, "open grant on a deleted connection", conn.execute(
        select(g.connection_id, g.permission).join(connections, c.id == g.connection_id)
        .where(c.status == "deleted", g.valid_to.is_(None))
    ).all(), "connection {} is deleted but still holds {}")


def _check_changes(conn: Connection, result: CheckResult) -> None:
    """The changes: each opens or closes an interval, and they alternate in time per connection and permission."""
    g, pc = permission_grants.c, permission_changes.c

    def interval_at(column: Any) -> Exists:
        return select(g.connection_id).where(g.connection_id == pc.connection_id, g.permission == pc.permission,
                                             column == pc.observed_at).exists()

    _report(result, "change without its interval", conn.execute(
        select(pc.id, pc.change, pc.connection_id, pc.permission, pc.observed_at).where(or_(
            and_(pc.change == "granted", ~interval_at(g.valid_from)),
            and_(pc.change == "revoked", ~interval_at(g.valid_to)),
        ))
    ).all(), "change {} ({}) of connection {}, {} at {} opens or closes no interval")
    out_of_order: list[tuple[Any, ...]] = []
    last: tuple[Any, Any, str, Any] | None = None
    rows = conn.execution_options(yield_per=10_000).execute(
        select(pc.connection_id, pc.permission, pc.change, pc.observed_at, pc.previous_observed_at, pc.id)
        .order_by(pc.connection_id, pc.permission, pc.observed_at, pc.id))
    for conn_id, permission, change, observed, previous, change_id in rows:
        same = last is not None and last[:2] == (conn_id, permission)
        expected = ("revoked" if last[2] == "granted" else "granted") if same and last else "granted"
        if change != expected:
            out_of_order.append((change_id, conn_id, permission, change, expected))
        elif same and last and observed <= last[3]:
            out_of_order.append((change_id, conn_id, permission, f"at {observed}", "a later time"))
        elif previous is not None and previous >= observed:
            out_of_order.append((change_id, conn_id, permission, f"after {previous}", "an earlier one"))
        last = (conn_id, permission, change, observed)
    _report(result, "changes out of order", out_of_order, "change {} of connection {}, {}: {} where {} was due")
