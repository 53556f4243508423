"""The daemon: passes on an APScheduler 3 schedule, one at a time, until SIGTERM or SIGINT.

- One job, ``max_instances=1`` and ``coalesce=True``: a pass never overlaps the
  previous one, and passes missed while the process was busy or asleep run once,
  if they are at most ``schedule.misfire_grace`` late.
- The first pass runs at start-up.
- Each pass takes the database's run lock. If another process holds it (a cron
  ``sync``, a second daemon), the pass is skipped and says so; the next tick tries again.
- On SIGTERM or SIGINT no new pass starts and no new request is sent; requests
  in flight finish, what they fetched is stored, the run is recorded
  (``aborted``, saying how far it got), and the process exits 0. A pass that has
  not finished within ``daemon.stop_timeout`` (a request stuck until
  ``api.timeout_seconds``) is recorded as aborted and the process exits 0 anyway.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
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
from etl.metrics import Metrics
from etl.runloop import RunResult, outcome_without_result
from etl.stop import StopRequest
from etl.sync import sync

log = logging.getLogger(__name__)
JOB_ID = "sync-pass"


def build_trigger(config: Config) -> CronTrigger | IntervalTrigger:
    """A cron trigger when ``schedule.cron`` is set, else an interval trigger."""
    if config.schedule.cron:
        return CronTrigger.from_crontab(config.schedule.cron, timezone=dt.UTC)
    return IntervalTrigger(seconds=config.schedule.interval_seconds, timezone=dt.UTC)


def build_scheduler(config: Config, job: Callable[[], object], *, now: Callable[[], dt.datetime] = utcnow
                    ) -> BackgroundScheduler:
    """A scheduler (not started) with the one pass job: never overlapping, coalescing missed runs."""
    scheduler = BackgroundScheduler(timezone=dt.UTC)
    scheduler.add_job(
        job,
        build_trigger(config),
        id=JOB_ID,
        name="smartcar-etl pass",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=int(config.schedule.misfire_grace_seconds),
        next_run_time=now(),  # the first pass at start-up
    )
    return scheduler


class Daemon:
    """Runs passes and stops cleanly; ``run_pass`` is the scheduler's job."""

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
        self._cancel: StopRequest | None = None
        self._lock = threading.Lock()

    def run_pass(self) -> RunResult | None:
        """One pass; errors are logged, never raised, so the daemon keeps its schedule."""
        with self._lock:
            if self.stopping.is_set():
                return None
            self._cancel = StopRequest()
            self.idle.clear()
        try:
            return sync(self.config, self.store, seams=replace(self.seams, cancelled=self._cancel), trigger="daemon")
        except LockHeld as error:
            self.metrics.lock_skips.inc()
            log.warning("skipping this pass: %s", error,
                        extra={"result": outcome_without_result("skipped", error.exit_code, str(error))})
        except SyncAborted as error:
            if error.run_id is None:  # else the run's own closing record has said it, with its result
                self._unrecorded(str(error), "aborted", error.exit_code)
        except EtlError as error:  # before a run could be recorded: the database is down, say
            self._unrecorded(str(error), "error" if error.exit_code == 2 else "aborted", error.exit_code)
        except Exception as error:  # the daemon goes on; the traceback only inside a JSON log record
            log.error("pass failed unexpectedly: %s", one_line(error), exc_info=True)
            self._unrecorded(f"internal error ({one_line(error)})", "aborted", 3)
        finally:
            with self._lock:
                self._cancel = None
                self.idle.set()
            try:
                self.metrics.load_state(self.store, self.config)  # freshness and budget after every pass
            except Exception as error:  # a database that is down or not migrated: the metrics wait
                log.warning("could not read the freshness and budget for the metrics: %s", one_line(error))
        return None

    def _unrecorded(self, error: str, status: str, exit_code: int) -> None:
        """A pass that failed before it could record a run: logged, and counted in the metrics all the same."""
        log.error("pass failed: %s", error, extra={"result": outcome_without_result(status, exit_code, error)})
        self.metrics.runs.labels(status="aborted").inc()

    def request_stop(self, signum: int | None = None) -> None:
        """Stop scheduling, and let the pass in flight finish what it has started."""
        name = signal.Signals(signum).name if signum else "request"
        if not self.stopping.is_set():
            log.info("stopping (%s): no new pass or request; waiting for requests in flight", name)
        with self._lock:
            self.stopping.set()
            if self._cancel is not None:
                self._cancel.request(name)

    def serve(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code (0)."""
        self.store.require_migrated()
        self.metrics.load_state(self.store, self.config)
        listen = self.config.daemon.metrics_listen
        if listen:
            try:
                host, port = self.metrics.serve(listen)
            except OSError as error:
                msg = f"daemon.metrics_listen: cannot listen on {listen}: {error.strerror or error}"
                raise ConfigError(msg) from error
            log.info("metrics on http://%s:%d/metrics", host, port)
        scheduler = build_scheduler(self.config, self.run_pass, now=self.now)
        previous = {sig: signal.signal(sig, lambda signum, _frame: self.request_stop(signum))
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        scheduler.start()
        trigger = self.config.schedule.cron or f"every {self.config.schedule.interval_seconds:g}s"
        log.info("daemon started (pid %d): a pass %s", os.getpid(), trigger)
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

