"""What an operator asks first: recent runs, connections by status, and the ones failing."""

from __future__ import annotations

import datetime as dt
from typing import Any

from etl.api.listing import pages_for
from etl.config import Config
from etl.db.store import Store

RUN_COLUMNS = ("run_id", "trigger", "status", "started_at", "duration_seconds", "planned", "fetched",
               "changed", "deleted", "deletions_held", "failed", "requests", "error")
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
            "deletions_held": row.deletions_held, "failed": row.connections_failed, "granted": row.permissions_granted,
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


def freshness(store: Store, config: Config, *, at: dt.datetime) -> dict[str, Any]:
    """How fresh the mirror is: connections fetched within ``schedule.interval``, never fetched, and ages."""
    ages = store.success_ages(at=at, window=config.schedule.interval_seconds)

    def age(when: dt.datetime | None) -> float | None:
        return round((at - when).total_seconds(), 3) if when is not None else None

    return {
        "interval_seconds": config.schedule.interval_seconds,
        "tracked": ages["tracked"], "fetched_within_interval": ages["fresh"],
        "never_fetched": ages["never_fetched"], "oldest_success_at": ages["oldest_success_at"],
        "oldest_age_seconds": age(ages["oldest_success_at"]),
        "median_age_seconds": age(ages["median_success_at"]), "p95_age_seconds": age(ages["p95_success_at"]),
    }


def budget(store: Store, config: Config, *, at: dt.datetime, tracked: int) -> dict[str, Any]:
    """The rate budget: tokens now, requests an hour, what a full refresh costs per strategy, and
    whether ``schedule.interval`` can be met."""
    from etl.context import budget_key

    capacity, per_second = float(config.rate_limit.capacity), config.rate_limit.per_minute / 60
    tokens = store.budget_tokens(budget_key(config), at=at, empty=capacity)
    pages = pages_for(tracked, config.sync.page_size) if tracked else 0

    def seconds_for(requests: int) -> float:  # from a full bucket
        return max(0.0, requests - capacity) / per_second

    cheapest = min(seconds_for(tracked), seconds_for(pages))
    return {
        "key": budget_key(config), "capacity": capacity, "per_minute": config.rate_limit.per_minute,
        "tokens_now": round(tokens, 3), "requests_per_hour": round(per_second * 3600, 3),
        "full_refresh": {"ids": {"requests": tracked, "seconds": round(seconds_for(tracked), 3)},
                         "list": {"requests": pages, "seconds": round(seconds_for(pages), 3)}},
        "interval_can_be_met": cheapest <= config.schedule.interval_seconds,
    }


def stale(store: Store, *, at: dt.datetime, max_age: float) -> dict[str, Any]:
    """How many tracked ``pending``/``active`` connections have no success within ``max_age`` seconds, and
    whether the mirror is stale: some are, or nothing is tracked at all (so nothing is fresh)."""
    ages = store.success_ages(at=at, window=max_age)
    count = int(ages["tracked"] - ages["fresh"])
    problem = None
    if not ages["tracked"]:
        problem = "nothing is tracked, so nothing is fresh"
    elif count:
        problem = f"{count} connection(s) without a success within the limit"
    return {"max_age_seconds": max_age, "connections": count, "tracked": int(ages["tracked"]), "problem": problem}
