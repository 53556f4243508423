"""What an operator asks first: recent runs, connections by status, and the ones failing."""

from __future__ import annotations

from typing import Any

from etl.db.store import Store

RUN_COLUMNS = ("run_id", "trigger", "status", "started_at", "duration_seconds", "planned", "fetched",
               "changed", "deleted", "failed", "requests", "error")
FAILING_COLUMNS = ("connection_id", "status", "failures_in_a_row", "last_attempt_at", "next_due_at",
                   "last_success_at", "last_error")


def status_report(store: Store, *, runs: int = 10, failing: int = 50) -> dict[str, Any]:
    """Recent runs (newest first), tracked connections by status, and failing connections."""
    store.require_migrated()
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
        for row in store.recent_runs(runs)
    ]
    by_status, untracked = store.connections_by_status()
    rows, failing_total = store.failing(failing)
    failing_rows = [
        {
            "connection_id": row.id, "status": row.status, "failures_in_a_row": row.consecutive_failures,
            "last_attempt_at": row.last_attempt_at, "next_due_at": row.next_due_at,
            "last_success_at": row.last_success_at, "last_error": row.last_error,
        }
        for row in rows
    ]
    return {
        "runs": recent,
        "connections": {**by_status, "tracked": sum(by_status.values()), "untracked": untracked},
        "failing": failing_rows,
        "failing_total": failing_total,
        "last_success_at": store.last_success_at(),
    }
