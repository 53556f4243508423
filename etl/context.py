"""A run is an object: ``Pass`` holds what one pass needs, built once from the config.

``Seams`` are the external dependencies (transport, sleep, clock, cancellation,
metrics, rate limiter): production defaults, fakes in tests. A ``Pass`` is
built from a config, a Store and the seams, and handed down to the sources and
the run loop instead of a dozen arguments.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Protocol

import httpx

from etl.api.auth import token_source
from etl.api.client import ClientOptions, SmartcarClient
from etl.api.deadline import PassDeadline
from etl.api.ratelimit import Limiter, SharedBucket, below, shared_bucket
from etl.api.retry import RetryPolicy
from etl.api.transport import make_http_client
from etl.cadence import Cadence
from etl.clock import utcnow
from etl.config import Config
from etl.db.store import Bucket, Store
from etl.metrics import ApplicationMetrics, Metrics


class Progress(Protocol):
    """What a progress display needs: a start with the expected total, steps, an end."""

    def start(self, total: int | None) -> None: ...

    def advance(self, count: int, total: int | None = None) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Seams:
    """Everything external a pass touches; each default is production's, each can be a fake."""

    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], object] | None = None  # retry waits; default: a wait that a cancel cuts short
    now: Callable[[], dt.datetime] = utcnow
    cancelled: threading.Event | None = None
    metrics: Metrics | None = None
    limiter: Limiter | None = None  # default: the application's bucket in the database (one per process without)
    progress: Progress | None = None  # a progress bar (a terminal)


def budget_key(config: Config) -> str:
    """Which bucket of the database this application draws from: ``rate_limit.key``, else the application's
    name (Smartcar keeps one bucket per application; every process of the job shares it)."""
    return config.rate_limit.key or config.api.application


def of_application(store: Store, config: Config) -> Store:
    """The store as the configured application sees it (unless it is scoped already): a pass, a backfill, a
    dry run are always one application's, its connections, lock, runs and checkpoints."""
    return store if store.application is not None else store.scoped(config.api.application)


def application_bucket(config: Config) -> Bucket:
    """The bucket the job keeps for the application: just under the API's (``rate_limit.*``)."""
    return Bucket(*below(config.rate_limit.capacity, config.rate_limit.per_minute))


class StoreLedger:
    """The application's token bucket in the database, as a ``Ledger`` for a ``SharedBucket``."""

    def __init__(self, store: Store, config: Config, now: Callable[[], dt.datetime] | None = None) -> None:
        """``now`` is the tests' clock; by default the database server's (SQLite: this machine's)."""
        self.store = store
        self.key = budget_key(config)
        self.bucket = application_bucket(config)
        self.now = now

    def lease(self, want: int) -> tuple[int, float]:
        """Tokens granted, and the wait for the next one when none was."""
        lease = self.store.lease_tokens(self.key, want=want, bucket=self.bucket, at=self.now() if self.now else None)
        return lease.granted, lease.wait

    def drain(self, seconds: float) -> None:
        """Empty the bucket for ``seconds`` (the store keeps it within one bucket's refill)."""
        self.store.drain_tokens(self.key, seconds=seconds, at=self.now() if self.now else None)


def shared_limiter(config: Config, store: Store, seams: Seams) -> SharedBucket:
    """The application's bucket in the database; each lease is about a second of refill."""
    ledger = StoreLedger(store, config, None if seams.now is utcnow else seams.now)
    lease = int(min(ledger.bucket.capacity, max(1.0, ledger.bucket.per_second)))
    return SharedBucket(ledger, lease=lease, sleep=seams.sleep)


def build_client(
    config: Config, seams: Seams = Seams(), store: Store | None = None,  # noqa: B008 - frozen, immutable
    deadline: PassDeadline | None = None,
) -> SmartcarClient:
    """A client from the config and the seams; with a ``store``, its rate limit is the one kept there."""
    cancelled = seams.cancelled or threading.Event()
    r = config.retry
    retry = RetryPolicy(
        max_attempts=r.max_attempts, initial_backoff=r.initial_backoff_seconds,
        max_backoff=r.max_backoff_seconds, max_retry_after=r.max_retry_after_seconds,
        sleep=seams.sleep or cancelled.wait, deadline=config.api.retry_deadline_seconds,
    )
    http = make_http_client(timeout=config.api.timeout_seconds, concurrency=config.api.concurrency,
                            transport=seams.transport)
    auth = token_source(config.api, http=http, retry=retry)
    limiter: Limiter
    if seams.limiter is not None:
        limiter = seams.limiter
    elif store is not None:
        limiter = shared_limiter(config, store, replace(seams, cancelled=cancelled))
    else:
        limiter = shared_bucket(config.rate_limit.capacity, config.rate_limit.per_minute)
    options = ClientOptions(now=seams.now, cancelled=cancelled, limiter=limiter, limits=config.api.read_limits(),
                            on_request=seams.metrics.of(config.api.application).request if seams.metrics else None,
                            deadline=deadline)
    return SmartcarClient(base_url=config.api.base_url, auth=auth, http=http, retry=retry, options=options)


@dataclass
class Pass:
    """One run's context: config, store, client, clock, metrics and the cadence that sets due times."""

    config: Config
    store: Store
    client: SmartcarClient
    now: Callable[[], dt.datetime] = utcnow
    metrics: ApplicationMetrics | None = None

    @classmethod
    def open(
        cls, config: Config, store: Store, seams: Seams = Seams(), max_duration: float | None = None,  # noqa: B008
    ) -> Pass:
        """Build the pass (its client included); the database must be migrated.

        With ``max_duration`` (seconds), no request starts that could not end within it.
        """
        store = of_application(store, config)
        store.require_migrated()
        deadline = None if max_duration is None else PassDeadline(
            seconds=max_duration, now=seams.now, cap=config.api.request_deadline_seconds)
        metrics = seams.metrics.of(config.api.application) if seams.metrics else None
        return cls(config, store, build_client(config, seams, store, deadline), seams.now, metrics)

    @property
    def cancelled(self) -> threading.Event:
        """Set from outside (a daemon stopping) to stop sending requests."""
        return self.client.cancelled

    @property
    def cadence(self) -> Cadence:
        """When fetched, failed and deleted connections are due again."""
        return Cadence.from_config(self.config.schedule)

    def affordable_requests(self) -> float:
        """How many requests the rate budget allows before the pass must end (infinite without an end)."""
        deadline = self.client.deadline
        if deadline is None:
            return float("inf")
        bucket = application_bucket(self.config)
        tokens = self.store.budget_tokens(budget_key(self.config), at=self.now(), empty=bucket.capacity)
        return max(0.0, tokens) + bucket.per_second * max(0.0, deadline.left())

    @contextmanager
    def locked(self) -> Iterator[Pass]:
        """Hold the run lock (LockHeld, exit 4, if another run has it), close stale runs; close the client after."""
        try:
            with self.store.lock():
                self.store.close_stale_runs(at=self.now())
                yield self
        finally:
            self.client.http.close()
