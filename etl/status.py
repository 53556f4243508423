"""What an operator asks first: recent runs, connections by status, and the ones failing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, sync_runs

RUN_COLUMNS = ("run_id", "trigger", "status", "started_at", "duration_seconds", "planned", "fetched",
               "changed", "deleted", "failed", "requests", "error")
FAILING_COLUMNS = ("connection_id", "status", "failures_in_a_row", "last_attempt_at", "next_due_at",
                   "last_success_at", "last_error")


def status_report(engine: Engine, *, runs: int = 10, failing: int = 50) -> dict[str, Any]:
    """Recent runs (newest first), tracked connections by status, and failing connections."""
    require_migrated(engine)
    r, c = sync_runs.c, connections.c
    with translate_errors(engine), engine.connect() as conn:
        recent = [
            {
                "run_id": row.id, "trigger": row.trigger, "status": row.status, "started_at": row.started_at,
                "finished_at": row.finished_at,
                "duration_seconds": round((row.finished_at - row.started_at).total_seconds(), 3)
                if row.finished_at else None,
                "planned": row.connections_planned, "fetched": row.connections_fetched,
                "changed": row.connections_changed, "deleted": row.connections_deleted,
                "failed": row.connections_failed, "granted": row.permissions_granted,
                "revoked": row.permissions_revoked, "requests": row.requests, "error": row.error,
                "pid": row.pid, "host": row.host,
            }
            for row in conn.execute(select(sync_runs).order_by(r.id.desc()).limit(runs))
        ]
        by_status = {"pending": 0, "active": 0, "deleted": 0}
        untracked = 0
        for status, tracked, count in conn.execute(
            select(c.status, c.tracked, func.count()).group_by(c.status, c.tracked)
        ):
            if tracked:
                by_status[status] = count
            else:
                untracked += count
        failing_rows = [
            {
                "connection_id": row.id, "status": row.status, "failures_in_a_row": row.consecutive_failures,
                "last_attempt_at": row.last_attempt_at, "next_due_at": row.next_due_at,
                "last_success_at": row.last_success_at, "last_error": row.last_error,
            }
            for row in conn.execute(
                select(connections).where(c.tracked.is_(True), c.last_error.is_not(None))
                .order_by(c.consecutive_failures.desc(), c.last_attempt_at.desc(), c.id).limit(failing)
            )
        ]
        failing_total = conn.scalar(
            select(func.count()).where(c.tracked.is_(True), c.last_error.is_not(None))) or 0
        last_success = conn.scalar(select(func.max(r.finished_at)).where(r.status == "succeeded"))
    return {
        "runs": recent,
        "connections": {**by_status, "tracked": sum(by_status.values()), "untracked": untracked},
        "failing": failing_rows,
        "failing_total": failing_total,
        "last_success_at": last_success,
    }
