"""Prometheus metrics: served by the daemon, or written to a file by one-shot runs.

Every metric lives in a registry of its own (not the process-global one), so
two runs in one process, or two tests, never share counters by accident.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile

if TYPE_CHECKING:
    from etl.config import Config
    from etl.db.store import Store


class Metrics:
    """The job's counters and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("smartcar_etl_api_requests", "API requests by outcome and HTTP status",
                                ["outcome", "status"], registry=r)
        self.connections = Counter("smartcar_etl_connections", "Connections handled, by result "
                                   "(fetched, changed, deleted, failed)", ["result"], registry=r)
        self.permission_changes = Counter("smartcar_etl_permission_changes", "Permission changes recorded",
                                          ["change"], registry=r)
        self.fields_nulled = Counter("smartcar_etl_fields_nulled", "Descriptive fields stored as NULL because "
                                     "the API sent a value no column can hold", registry=r)
        self.runs = Counter("smartcar_etl_runs", "Runs by final status", ["status"], registry=r)
        self.run_duration = Gauge("smartcar_etl_last_run_duration_seconds", "Duration of the last run",
                                  registry=r)
        self.last_success = Gauge("smartcar_etl_last_success_timestamp_seconds",
                                  "Unix time when the last run that succeeded finished", registry=r)
        self.last_pass = Gauge("smartcar_etl_last_pass_timestamp_seconds",
                               "Unix time when the last run finished, whatever its status", registry=r)
        self.deferred = Counter("smartcar_etl_connections_deferred", "Due connections left for the next pass "
                                "(--max-duration)", registry=r)
        self.rate_limit_wait = Gauge("smartcar_etl_last_run_rate_limit_wait_seconds",
                                     "Wall time the last run waited for the rate limit", registry=r)
        self.oldest_success_age = Gauge("smartcar_etl_oldest_success_age_seconds",
                                        "Age of the oldest last success of a tracked pending or active connection "
                                        "(NaN while one was never fetched)", registry=r)
        self.budget_tokens = Gauge("smartcar_etl_rate_budget_tokens", "Tokens in the application's rate budget",
                                   registry=r)
        self.deletions_held = Gauge("smartcar_etl_last_run_deletions_held",
                                    "404s of live connections the last run held back and did not store "
                                    "(the mass-deletion guard, sync.max_deleted_share)", registry=r)
        self.lock_skips = Counter("smartcar_etl_lock_skips", "Passes skipped because another run held the lock",
                                  registry=r)
        self._server: Any = None

    def request(self, outcome: str, status: int | None) -> None:
        """Count one API request (outcome: ok, not_found, or the error kind)."""
        self.requests.labels(outcome=outcome, status=str(status) if status is not None else "none").inc()

    def batch(self, counts: Any) -> None:
        """Count what one stored batch did (its ``BatchCounts``)."""
        fetched, changed, deleted, failed = counts.fetched, counts.changed, counts.deleted, counts.failed
        granted, revoked = counts.granted, counts.revoked
        self.fields_nulled.inc(counts.nulled)
        for result, n in (("fetched", fetched), ("changed", changed), ("deleted", deleted), ("failed", failed)):
            self.connections.labels(result=result).inc(n)
        self.permission_changes.labels(change="granted").inc(granted)
        self.permission_changes.labels(change="revoked").inc(revoked)

    def run(self, result: Any, *, finished_at: dt.datetime) -> None:
        """Record a finished run (its ``RunResult``)."""
        self.runs.labels(status=result.status).inc()
        self.run_duration.set(result.seconds)
        self.rate_limit_wait.set(result.rate_limit_wait)
        self.deferred.inc(result.deferred)
        self.deletions_held.set(result.deletions_held)
        self.last_pass.set(finished_at.timestamp())
        if result.status == "succeeded":
            self.last_success.set(finished_at.timestamp())

    def load_state(self, store: Store, config: Config) -> None:
        """Set the gauges the database knows: the last success (so a restart does not reset it), the oldest
        success age and the tokens of the rate budget."""
        from etl.clock import utcnow
        from etl.status import budget, freshness

        at = utcnow()
        fresh = freshness(store, config, at=at)
        oldest = fresh["oldest_age_seconds"]
        self.oldest_success_age.set(float("nan") if fresh["never_fetched"] or oldest is None else oldest)
        self.budget_tokens.set(budget(store, config, at=at, tracked=fresh["tracked"])["tokens_now"])
        last = store.last_success_at()
        if last is not None:
            self.last_success.set(last.timestamp())

    def serve(self, listen: str) -> tuple[str, int]:
        """Serve /metrics on ``host:port`` (port 0: any free port) in a thread; return the address."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host.strip("[]"), registry=self.registry)
        self._server = server
        return host, int(server.server_port)

    def close(self) -> None:
        """Stop serving."""
        if self._server is not None:
            server, self._server = self._server, None
            threading.Thread(target=server.shutdown, daemon=True).start()
            server.server_close()

    def write_textfile(self, path: str) -> None:
        """Write every metric to ``path`` atomically (node_exporter's textfile collector)."""
        write_to_textfile(path, self.registry)
