"""The daemon: passes on an APScheduler 3 schedule, one application's pass at a time each, until SIGTERM or SIGINT.

- One job per application (its own ``schedule.interval`` or ``schedule.cron``), ``max_instances=1`` and
  ``coalesce=True``: an application's pass never overlaps its previous one, and passes missed while the
  process was busy or asleep run once, if they are at most ``schedule.misfire_grace`` late.
- Intervals count from a fixed instant (2000-01-01 UTC), so every daemon computes the same firings.
  Each firing is claimed in the database (``Store.claim_firing``, a conditional update): when several
  daemons on several hosts share a database, each firing of an application runs in exactly one of them,
  and when one dies the others go on taking every firing.
- The first pass of each application runs at start-up, as the firing just past (unless another daemon
  took it already).
- ``/healthz``, beside ``/metrics``, answers 200 while the daemon handles its firings (``etl.liveness``).
- Each pass takes its application's run lock. If another process holds it (a cron ``sync``), the pass is
  skipped and says so; the next firing tries again.
- On SIGTERM or SIGINT no new pass starts and no new request is sent; requests
  in flight finish, what they fetched is stored, the runs are recorded
  (``aborted``, saying how far they got), and the process exits 0. A pass that has
  not finished within ``daemon.stop_timeout`` (a request stuck until
  ``api.timeout_seconds``) is recorded as aborted and the process exits 0 anyway.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import replace

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from etl.clock import utcnow
from etl.config import Config
from etl.context import Seams
from etl.db.store import Store
from etl.errors import ConfigError, EtlError, LockHeld, SyncAborted, one_line
from etl.liveness import Liveness
from etl.metrics import Metrics
from etl.runloop import RunResult, outcome_without_result
from etl.stop import StopRequest
from etl.sync import sync

log = logging.getLogger(__name__)
JOB_ID = "sync-pass"


# Intervals count from here, so that every daemon sharing a database computes the same firings.
INTERVAL_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def build_trigger(config: Config) -> CronTrigger | IntervalTrigger:
    """A cron trigger when ``schedule.cron`` is set, else an interval trigger counted from a fixed instant."""
    if config.schedule.cron:
        return CronTrigger.from_crontab(config.schedule.cron, timezone=dt.UTC)
    return IntervalTrigger(seconds=config.schedule.interval_seconds, start_date=INTERVAL_ORIGIN, timezone=dt.UTC)


def latest_firing(trigger: CronTrigger | IntervalTrigger, now: dt.datetime, grace: float) -> dt.datetime | None:
    """The trigger's last firing at or before ``now``, looked for within ``grace`` seconds; None if none."""
    last = None
    at = trigger.get_next_fire_time(None, now - dt.timedelta(seconds=grace))
    while at is not None and at <= now:
        last = at
        at = trigger.get_next_fire_time(None, at + dt.timedelta(microseconds=1))
    return last


def lookback(config: Config) -> float:
    """How far back the firing just past is looked for: the misfire grace, or one period of the schedule (so that
    daemons starting between two firings take the same one, the last, for their start-up pass)."""
    if config.schedule.cron:
        trigger = build_trigger(config)
        first = trigger.get_next_fire_time(None, utcnow())
        second = trigger.get_next_fire_time(first, first + dt.timedelta(microseconds=1)) if first else None
        period = (second - first).total_seconds() if first and second else 0.0
    else:
        period = config.schedule.interval_seconds
    return max(float(config.schedule.misfire_grace_seconds), period)


def build_scheduler(jobs: dict[str, tuple[Config, Callable[[], object]]], *,
                    now: Callable[[], dt.datetime] = utcnow) -> BackgroundScheduler:
    """A scheduler (not started) with one pass job per application (name: its config and job): never
    overlapping, coalescing missed runs, the first at start-up."""
    scheduler = BackgroundScheduler(timezone=dt.UTC)
    for name, (config, job) in jobs.items():
        scheduler.add_job(
            job, build_trigger(config), id=f"{JOB_ID}:{name}", name=f"smartcar-etl pass of {name}",
            max_instances=1, coalesce=True, misfire_grace_time=int(config.schedule.misfire_grace_seconds),
            next_run_time=now(),  # the first pass at start-up
        )
    return scheduler


class Daemon:
    """Runs passes and stops cleanly; ``run_pass(name)`` is the scheduler's job of application ``name``."""

    def __init__(self, config: Config, store: Store, *, seams: Seams = Seams()) -> None:  # noqa: B008 - immutable
        """``seams`` as for ``sync``; each pass gets its own cancellation, and the daemon's metrics."""
        self.config = config
        self.store = store
        self.metrics = seams.metrics or Metrics()
        self.seams = replace(seams, metrics=self.metrics)
        self.now = seams.now
        self.stopping = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self._cancels: dict[str, StopRequest] = {}
        self._lock = threading.Lock()
        self.claimer = f"{socket.gethostname()}:{os.getpid()}"
        self.liveness = Liveness(config, now=self.now)

    def run_pass(self, name: str | None = None) -> RunResult | None:
        """One pass of application ``name`` (default: the first configured); errors are logged, never raised, so
        the daemon keeps its schedule. The scheduler calls it through ``fire``, which first takes the firing."""
        name = name or self.config.application_names()[0]
        config, store = self.config.for_application(name), self.store.scoped(name)
        with self._lock:
            if self.stopping.is_set():
                return None
            cancel = self._cancels[name] = StopRequest()
            self.idle.clear()
        try:
            return sync(config, store, seams=replace(self.seams, cancelled=cancel), trigger="daemon")
        except LockHeld as error:
            self.metrics.of(name).lock_skip()
            log.warning("%s: skipping this pass: %s", name, error,
                        extra={"result": outcome_without_result("skipped", error.exit_code, str(error))})
        except SyncAborted as error:
            if error.run_id is None:  # else the run's own closing record has said it, with its result
                self._unrecorded(name, str(error), error.exit_code)
        except EtlError as error:  # before a run could be recorded: the database is down, say
            self._unrecorded(name, str(error), error.exit_code)
        except Exception as error:  # the daemon goes on; the traceback only inside a JSON log record
            log.error("pass failed unexpectedly: %s", one_line(error), exc_info=True)
            self._unrecorded(name, f"internal error ({one_line(error)})", 3)
        finally:
            with self._lock:
                self._cancels.pop(name, None)
                if not self._cancels:
                    self.idle.set()
            try:
                self.metrics.of(name).load_state(store, config)  # freshness and budget after every pass
            except Exception as error:  # a database that is down or not migrated: the metrics wait
                log.warning("could not read the freshness and budget for the metrics: %s", one_line(error))
        return None

    def fire(self, name: str) -> RunResult | None:
        """The scheduler's job: application ``name``'s pass, if this daemon takes the firing just past; the
        liveness beats as the firing is taken up and as it is done with, whatever came of it."""
        self.liveness.beat()
        try:
            return self._fire(name)
        finally:
            self.liveness.beat()

    def _fire(self, name: str) -> RunResult | None:
        """Application ``name``'s pass, if this daemon takes the firing just past. One that another daemon took
        still refreshes this daemon's gauges from the database (its last success, say): every replica's metrics
        tell the truth, whichever ran the pass."""
        config, store = self.config.for_application(name), self.store.scoped(name)
        try:
            if self.stopping.is_set():
                return None
            if self._claimed(config, store):
                return self.run_pass(name)
            self.metrics.of(name).load_state(store, config)
        except EtlError as error:  # the database is down, say: the pass would say the same
            log.warning("%s: could not take this firing: %s", name, error)
        return None

    def _claimed(self, config: Config, store: Store) -> bool:
        """Whether this daemon takes the application's firing just past (another daemon may have)."""
        at = self.now()
        firing = latest_firing(build_trigger(config), at, lookback(config)) or at
        if store.claim_firing(firing, claimer=self.claimer, at=at):
            log.info("%s: took the firing of %s", config.api.application, firing.isoformat())
            return True
        log.info("%s: the firing of %s was taken by another daemon", config.api.application,
                 firing.isoformat(timespec="seconds"))
        return False

    def _unrecorded(self, name: str, error: str, exit_code: int) -> None:
        """A pass that failed before it could record a run: logged, and counted in the metrics all the same."""
        status = "error" if exit_code == 2 else "aborted"
        log.error("%s: pass failed: %s", name, error,
                  extra={"result": {**outcome_without_result(status, exit_code, error), "application": name}})
        self.metrics.of(name).unrecorded()

    def request_stop(self, signum: int | None = None) -> None:
        """Stop scheduling, and let the pass in flight finish what it has started."""
        name = signal.Signals(signum).name if signum else "request"
        if not self.stopping.is_set():
            log.info("stopping (%s): no new pass or request; waiting for requests in flight", name)
        with self._lock:
            self.stopping.set()
            for cancel in self._cancels.values():
                cancel.request(name)

    def serve(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code (0)."""
        self.store.require_migrated()
        for name in self.config.application_names():
            self.metrics.of(name).load_state(self.store.scoped(name), self.config.for_application(name))
        listen = self.config.daemon.metrics_listen
        if listen:
            try:
                host, port = self.metrics.serve(listen, health=self.liveness.answer)
            except OSError as error:
                msg = f"daemon.metrics_listen: cannot listen on {listen}: {error.strerror or error}"
                raise ConfigError(msg) from error
            log.info("metrics on http://%s:%d/metrics, liveness on /healthz", host, port)
        names = self.config.application_names()
        jobs: dict[str, tuple[Config, Callable[[], object]]] = {
            name: (self.config.for_application(name), functools.partial(self.fire, name)) for name in names}
        scheduler = build_scheduler(jobs, now=self.now)
        previous = {sig: signal.signal(sig, lambda signum, _frame: self.request_stop(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        scheduler.start()
        log.info("daemon started (pid %d): %s", os.getpid(), "; ".join(
            f"{name} {config.schedule.cron or f'every {config.schedule.interval_seconds:g}s'}"
            for name, (config, _) in jobs.items()))
        try:
            while not self.stopping.wait(1.0):
                pass
            scheduler.shutdown(wait=False)
            if not self.idle.wait(self.config.daemon.stop_timeout_seconds):
                self._abandon()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.metrics.close()
        log.info("daemon stopped")
        return 0

    def _abandon(self) -> None:
        """The pass did not finish within stop_timeout: record it and leave without waiting."""
        timeout = self.config.daemon.stop_timeout_seconds
        log.error("a pass was still running %gs after the stop request; recording it as aborted", timeout)
        self.store.abandon_runs_of_this_process(
            at=self.now(), error=f"daemon stopped; requests still in flight after {timeout:g}s were abandoned")
        logging.shutdown()
        os._exit(0)  # worker threads are blocked in requests; the database rolls back their open work

