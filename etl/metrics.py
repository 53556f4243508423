"""Prometheus metrics: served by the daemon, or written to a file by one-shot runs.

Every metric lives in a registry of its own (not the process-global one), so
two runs in one process, or two tests, never share counters by accident. The
daemon's server also answers ``/healthz`` (``etl.liveness``).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, make_wsgi_app, write_to_textfile

if TYPE_CHECKING:
    from etl.config import Config
    from etl.db.store import Store


A = "application"  # every metric's first label: which Smartcar application it is about
RESULTS = ("fetched", "changed", "deleted", "failed")  # the connections counted, by result (``BatchCounts``)
PERMISSION_LABELS = 100  # permissions shown by smartcar_etl_connections_with_permission: the most held

log = logging.getLogger(__name__)


Health = Callable[[], tuple[int, str]]  # /healthz: the HTTP status and a line of text
StartResponse = Callable[..., Any]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """A thread per request, none waited for at shutdown (as prometheus_client's own server)."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """Logs no request: Prometheus scrapes and probes would fill the log."""

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing."""


def _app(registry: CollectorRegistry, health: Health | None) -> Callable[[dict[str, Any], StartResponse],
                                                                     Iterable[bytes]]:
    """The WSGI application: /healthz from ``health`` (when given), the metrics on every other path."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if health is None or environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        status, text = health()
        body = text.encode()
        start_response(f"{status} {HTTPStatus(status).phrase}", [
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
        return [body]

    return app


class Metrics:
    """The job's counters and gauges, each labelled with the application (``of(name)`` binds one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("smartcar_etl_api_requests", "API requests by outcome and HTTP status",
                                [A, "outcome", "status"], registry=r)
        self.connections = Counter("smartcar_etl_connections", "Connections handled, by result "
                                   "(fetched, changed, deleted, failed)", [A, "result"], registry=r)
        self.permission_changes = Counter("smartcar_etl_permission_changes", "Permission changes recorded",
                                          [A, "change"], registry=r)
        self.fields_nulled = Counter("smartcar_etl_fields_nulled", "Descriptive fields stored as NULL because "
                                     "the API sent a value no column can hold", [A], registry=r)
        self.runs = Counter("smartcar_etl_runs", "Runs by final status", [A, "status"], registry=r)
        self.run_duration = Gauge("smartcar_etl_last_run_duration_seconds", "Duration of the last run",
                                  [A], registry=r)
        self.last_success = Gauge("smartcar_etl_last_success_timestamp_seconds",
                                  "Unix time when the last run that succeeded finished", [A], registry=r)
        self.last_pass = Gauge("smartcar_etl_last_pass_timestamp_seconds",
                               "Unix time when the last run finished, whatever its status", [A], registry=r)
        self.deferred = Counter("smartcar_etl_connections_deferred", "Due connections left for the next pass "
                                "(--max-duration)", [A], registry=r)
        self.rate_limit_wait = Gauge("smartcar_etl_last_run_rate_limit_wait_seconds",
                                     "Wall time the last run waited for the rate limit", [A], registry=r)
        self.oldest_success_age = Gauge("smartcar_etl_oldest_success_age_seconds",
                                        "Age of the oldest last success of a tracked pending or active connection "
                                        "(NaN while one was never fetched)", [A], registry=r)
        self.budget_tokens = Gauge("smartcar_etl_rate_budget_tokens", "Tokens in the application's rate budget",
                                   [A], registry=r)
        self.deletions_held = Gauge("smartcar_etl_last_run_deletions_held",
                                    "404s of live connections the last run held back and did not store "
                                    "(the mass-deletion guard, sync.max_deleted_share)", [A], registry=r)
        self.lock_skips = Counter("smartcar_etl_lock_skips", "Passes skipped because another run held the lock",
                                  [A], registry=r)
        self.permission_holders = Gauge(
            "smartcar_etl_connections_with_permission",
            f"Active connections whose open grant is this permission: the {PERMISSION_LABELS} most held "
            "permissions of the application; the rest are left out", [A, "permission"], registry=r)
        self.permissions_shown: dict[str, set[str]] = {}  # per application: the permission labels set so far
        self.permissions_capped: set[str] = set()  # applications whose permissions were left out (logged once)
        self._server: Any = None

    def serve(self, listen: str, *, health: Health | None = None) -> tuple[str, int]:
        """Serve /metrics on ``host:port`` (port 0: any free port) in a thread, and /healthz from ``health`` if
        given; return the address."""
        host, _, port = listen.rpartition(":")
        family, *_, address = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)[0]
        server_class = type("MetricsServer", (_ThreadingServer,), {"address_family": family})
        server: WSGIServer = make_server(str(address[0]), int(port), _app(self.registry, health), server_class,
                             handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
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

    def of(self, application: str) -> ApplicationMetrics:
        """The metrics of one application: what a run of it records."""
        return ApplicationMetrics(self, application)


class ApplicationMetrics:
    """``Metrics`` with the application label bound: what one application's runs count and set."""

    def __init__(self, metrics: Metrics, application: str) -> None:
        from etl.runloop import EXIT_BY_STATUS  # the run statuses (etl.runloop imports this module)

        self.metrics = metrics
        self.application = application
        m = metrics
        for family in (m.fields_nulled, m.run_duration, m.last_success, m.last_pass, m.deferred, m.rate_limit_wait,
                       m.oldest_success_age, m.budget_tokens, m.deletions_held, m.lock_skips):
            family.labels(application)  # shown from the start (0), as a metric without labels is
        # The same for each run status and connection result: a counter that first appears at 1 would hide that
        # first count from increase() and rate(), and so from the alerts.
        for status in EXIT_BY_STATUS:
            m.runs.labels(application, status)
        for result in RESULTS:
            m.connections.labels(application, result)

    def request(self, outcome: str, status: int | None) -> None:
        """Count one API request (outcome: ok, not_found, or the error kind)."""
        self.metrics.requests.labels(self.application, outcome, str(status) if status is not None else "none").inc()

    def batch(self, counts: Any) -> None:
        """Count what one stored batch did (its ``BatchCounts``)."""
        m, a = self.metrics, self.application
        m.fields_nulled.labels(a).inc(counts.nulled)
        for result in RESULTS:
            m.connections.labels(a, result).inc(getattr(counts, result))
        m.permission_changes.labels(a, "granted").inc(counts.granted)
        m.permission_changes.labels(a, "revoked").inc(counts.revoked)

    def run(self, result: Any, *, finished_at: dt.datetime) -> None:
        """Record a finished run (its ``RunResult``)."""
        m, a = self.metrics, self.application
        m.runs.labels(a, result.status).inc()
        m.run_duration.labels(a).set(result.seconds)
        m.rate_limit_wait.labels(a).set(result.rate_limit_wait)
        m.deferred.labels(a).inc(result.deferred)
        m.deletions_held.labels(a).set(result.deletions_held)
        m.last_pass.labels(a).set(finished_at.timestamp())
        if result.status == "succeeded":
            m.last_success.labels(a).set(finished_at.timestamp())

    def unrecorded(self) -> None:
        """A pass that failed before it could record a run: counted as aborted all the same."""
        self.metrics.runs.labels(self.application, "aborted").inc()

    def lock_skip(self) -> None:
        """A pass skipped because another run held the application's lock."""
        self.metrics.lock_skips.labels(self.application).inc()

    def load_state(self, store: Store, config: Config) -> None:
        """Set the gauges the database knows: the last success (so a restart does not reset it), the oldest
        success age and the tokens of the rate budget (``store`` and ``config``: the application's)."""
        from etl.clock import utcnow
        from etl.status import budget, freshness

        m, a, at = self.metrics, self.application, utcnow()
        fresh = freshness(store, config, at=at)
        oldest = fresh["oldest_age_seconds"]
        m.oldest_success_age.labels(a).set(float("nan") if fresh["never_fetched"] or oldest is None else oldest)
        m.budget_tokens.labels(a).set(budget(store, config, at=at, tracked=fresh["tracked"])["tokens_now"])
        last = store.last_success_at()
        if last is not None:
            m.last_success.labels(a).set(last.timestamp())
        self.load_permissions(store)

    def load_permissions(self, store: Store) -> None:
        """Set how many active connections hold each permission, for the ``PERMISSION_LABELS`` most held.

        A permission shown before that no active connection holds any more is 0, not gone, while there is room
        under the cap; one pushed out by the cap is removed (its count is not known)."""
        m, a, gauge = self.metrics, self.application, self.metrics.permission_holders
        held, total = store.permission_holders(PERMISSION_LABELS)
        counts = dict(held)
        if total > len(held) and a not in m.permissions_capped:
            m.permissions_capped.add(a)
            log.warning("%s: active connections hold %d permissions; the metric %s shows the %d most held and "
                        "leaves out the rest (said once)", a, total, "smartcar_etl_connections_with_permission",
                        PERMISSION_LABELS)
        gone = sorted(m.permissions_shown.get(a, set()) - counts.keys())
        room = PERMISSION_LABELS - len(counts)  # 0 when some were left out: their counts are unknown
        counts.update(dict.fromkeys(gone[:room], 0))
        for permission in gone[room:]:
            gauge.remove(a, permission)
        for permission, holders in counts.items():
            gauge.labels(a, permission).set(holders)
        m.permissions_shown[a] = set(counts)
