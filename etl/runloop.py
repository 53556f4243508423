"""A run: the loop that stores a source's outcomes as one run, and how the run ended (``RunResult``).

``RunLoop`` takes a source's outcomes (``etl.fetch``), keeps them in ``Pending`` until a batch is full
or its oldest has waited ``sync.flush_seconds`` (``etl.heartbeat``), passes them by the guards
(``etl.guards``), and records the run's end. ``sync`` and ``backfill`` both run one.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from etl.context import Pass, Progress
from etl.errors import DatabaseError, EtlError, FatalApiError, SyncAborted, one_line
from etl.fetch import OutcomeSource
from etl.guards import DeletionGuard, OutageGuard
from etl.heartbeat import Heartbeat, Pending
from etl.outcomes import BatchCounts, Failed, Gone, Postponed, Result
from etl.stop import shielded

log = logging.getLogger(__name__)

EXIT_BY_STATUS = {"succeeded": 0, "partial": 1, "failed": 1, "aborted": 3}


@dataclass
class RunResult:
    """How a run ended."""

    run_id: int
    status: str
    planned: int
    counts: BatchCounts = field(default_factory=BatchCounts)
    requests: int = 0
    seconds: float = 0.0
    deferred: int = 0  # due connections left for the next pass (--max-duration)
    rate_limit_wait: float = 0.0  # seconds the run's requests waited for the rate limit
    hint: str | None = None  # what to do when a pass had nothing to fetch
    deletions_held: int = 0  # 404s of live connections the mass-deletion guard did not store
    error: str | None = None  # why a guard ended the pass
    application: str | None = None  # the application the run fetched for

    @property
    def exit_code(self) -> int:
        """The contract's exit code for this outcome."""
        return EXIT_BY_STATUS[self.status]

    def as_dict(self) -> dict[str, Any]:
        """The outcome as ``sync --format json`` prints it and the daemon logs it."""
        return {"application": self.application, "run_id": self.run_id, "status": self.status,
                "exit_code": self.exit_code, "planned": self.planned,
                **asdict(self.counts), "requests": self.requests, "seconds": round(self.seconds, 3),
                "deferred": self.deferred, "rate_limit_wait_seconds": round(self.rate_limit_wait, 3),
                "deletions_held": self.deletions_held, "hint": self.hint, "error": self.error}

    def summary(self) -> str:
        """One line for humans and logs."""
        c = self.counts
        waited = f" ({self.rate_limit_wait:.0f}s of it waiting for the rate limit)" \
            if self.rate_limit_wait >= 1 else ""
        nulled = f"; {c.nulled} field(s) stored as NULL (see the warnings)" if c.nulled else ""
        deferred = f"; {self.deferred} deferred to the next pass" if self.deferred else ""
        why = f"; {self.error}" if self.error else ""
        return (f"run {self.run_id} {self.status}: {self.planned} planned, {c.fetched} fetched, "
                f"{c.changed} changed, {c.deleted} deleted, {c.failed} failed; "
                f"{c.granted} granted, {c.revoked} revoked; {self.requests} requests in {self.seconds:.1f}s"
                f"{waited}{nulled}{deferred}{why}")


def outcome_without_result(status: str, exit_code: int, error: str, run_id: int | None = None) -> dict[str, Any]:
    """A pass's outcome when it ended without a result (skipped, aborted): a result's keys, the counts null."""
    return {**dict.fromkeys(RunResult(run_id=0, status="succeeded", planned=0).as_dict()),
            "run_id": run_id, "status": status, "exit_code": exit_code, "error": error}


@contextmanager
def progress_shown(progress: Progress | None, source: OutcomeSource, total: int | None
                   ) -> Iterator[Callable[[int], None] | None]:
    """A progress display around a run: started with ``total``, stepped for each outcome (the listing's
    totalCount, once known, else what the source plans, becomes its total), finished however the run ends.
    Gives the step for ``RunLoop``'s ``progress``; None without a display."""
    if progress is None:
        yield None
        return
    progress.start(total)
    try:
        yield lambda n: progress.advance(n, getattr(source, "total", None) or source.planned)
    finally:
        progress.finish()


@dataclass
class RunLoop:
    """Stores a source's outcomes as one run, and records how the run ended.

    ``checkpoint`` gives (backfill id, next page) to record with each batch;
    ``progress`` is called with 1 for every outcome (a progress bar).
    """

    ctx: Pass
    source: OutcomeSource
    run_id: int
    started_at: dt.datetime
    checkpoint: Callable[[], tuple[int, int | None] | None] | None = None
    progress: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        self.result = RunResult(run_id=self.run_id, status="running", planned=self.source.planned or 0,
                                application=self.ctx.config.api.application)
        settings = self.ctx.config.sync
        self.deletions = DeletionGuard(self.ctx.store, max_share=settings.max_deleted_share)
        self.outage = OutageGuard(limit=settings.outage_after)
        self.received = 0  # outcomes received (stored or waiting to be)
        self.postponed = 0  # connections whose retry would have ended past the deadline
        self._started = time.monotonic()
        self._requests_before = self.ctx.client.requests_sent
        limiter = self.ctx.client.limiter
        self._waited_before = limiter.waited if limiter is not None else 0.0

    def __call__(self) -> RunResult:
        """Run to the end. Raises SyncAborted (exit 3) when the API refuses the application or the
        database goes away: everything stored before stays, nothing more is written. When the pass is
        stopped from outside (a signal, the daemon stopping), requests in flight finish, what was received
        is stored, and the run ends ``aborted``, saying how far it got; an interruption (a second signal)
        stores what was received too.
        """
        settings = self.ctx.config.sync
        writer = self.ctx.store.batch_writer(self.run_id, cadence=self.ctx.cadence,
                                             pass_started_at=self.started_at, checkpoint=self.checkpoint)
        pending = Pending(lambda batch: self._stored(writer.write(batch), len(batch)),
                          size=settings.batch_size, flush_seconds=settings.flush_seconds)
        try:
            with Heartbeat(pending, report=self.report, interval=settings.progress_interval_seconds):
                with closing(self.source.outcomes()) as outcomes:
                    for outcome in outcomes:
                        self._take(pending, outcome)
                self._release_deletions(pending)
                pending.flush()
            self._end(*self._verdict())
        except (FatalApiError, DatabaseError) as error:
            self._end_quietly("aborted", str(error))
            log.error("%s; %d fetched results were not stored; cause: %s", self.result.summary(), len(pending),
                      error, extra={"run_id": self.run_id, "status": "aborted",
                                    "result": {**self.result.as_dict(), "exit_code": 3, "error": str(error)}})
            raise SyncAborted(run_id=self.run_id, cause=error) from error
        except EtlError as error:  # anything else that ends a run early aborts it: exit 3, as aborted runs do
            self._end_quietly("aborted", str(error))
            raise SyncAborted(run_id=self.run_id, cause=error) from error
        except BaseException as error:  # a bug or an interruption: store what was received, record, let it through
            self._store_quietly(pending)
            self._end_quietly("aborted", self._stopped(one_line(error, limit=500)))
            raise
        self.log_end()
        return self.result

    def log_end(self) -> None:
        """The run's one closing record (its JSON form carries the whole result, as ``sync --format json``)."""
        r = self.result
        log.info(r.summary() + (f"; {r.hint}" if r.hint else ""),
                 extra={"run_id": self.run_id, "status": r.status, "duration_seconds": round(r.seconds, 3),
                        "rate_limit_wait_seconds": round(r.rate_limit_wait, 3), "result": r.as_dict()})

    def report(self) -> tuple[str, dict[str, Any]]:
        """How the pass is doing, as a log line and its fields (the heartbeat logs it at intervals)."""
        c, planned = self.result.counts, self.source.planned
        left = None if planned is None else max(0, planned - self.received)
        limiter = self.ctx.client.limiter
        resume = getattr(limiter, "resume_at", None)
        waiting = None if resume is None else dt.datetime.fromtimestamp(resume, dt.UTC)
        elapsed = time.monotonic() - self._started
        end = None if not left or not self.received else \
            self.ctx.now() + dt.timedelta(seconds=left * elapsed / self.received)
        fields = {"run_id": self.run_id, "sent": self.ctx.client.requests_sent - self._requests_before,
                  "received": self.received, "stored": c.fetched + c.deleted + c.failed, "failed": c.failed,
                  "left": left, "waiting_for_budget_until": waiting, "expected_end": end}
        line = (f"run {self.run_id}: {fields['sent']} request(s) sent, {fields['stored']} connection(s) stored "
                f"({c.failed} failed), {'an unknown number' if left is None else left} left")
        if waiting is not None:
            line += f"; waiting for the rate budget until {waiting.isoformat(timespec='seconds')}"
        if end is not None:
            line += f"; expected to end about {end.isoformat(timespec='seconds')}"
        return line, {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in fields.items()}

    def _take(self, pending: Pending, outcome: Result) -> None:
        self.received += 1
        if self.progress is not None:
            self.progress(1)
        if self.outage.see(outcome):
            self.ctx.cancelled.set()  # stop asking: requests in flight finish and are stored
        if isinstance(outcome, Postponed):  # nothing to store: it stays due
            self.postponed += 1
            return
        if isinstance(outcome, Failed):
            log.warning("connection %s failed: %s", outcome.connection_id, outcome.error,
                        extra={"run_id": self.run_id, "connection_id": outcome.connection_id})
        if isinstance(outcome, Gone):
            self.deletions.hold(outcome)  # judged when the pass ends (``_release_deletions``)
            return
        pending.add(outcome)

    def _release_deletions(self, pending: Pending) -> None:
        """Store the held 404s that the mass-deletion guard lets through; a pass that was stopped (on request,
        or by the outage guard) stores none of them: they stay due."""
        if self.ctx.cancelled.is_set():
            dropped = self.deletions.drop()
            if dropped:
                log.info("run %s stopped: %d 404(s) held for the mass-deletion guard were not stored; they stay "
                         "due", self.run_id, dropped)
            return
        pending.flush()  # every document received is counted before the guard judges
        pending.extend(list(self.deletions.release(answered=self.result.counts.fetched)))
        self.result.deletions_held = self.deletions.dropped

    def _stored(self, counts: BatchCounts, size: int) -> BatchCounts:
        """Count a stored batch (in the run loop's thread, or the heartbeat's)."""
        log.debug("run %s: stored a batch of %d", self.run_id, size)
        self.result.counts.add(counts)
        if self.ctx.metrics is not None:
            self.ctx.metrics.batch(counts)
        return counts

    def _store_quietly(self, pending: Pending) -> None:
        """Store what was received while an interruption is on its way out; a failure is only logged."""
        self.deletions.drop()
        try:
            pending.flush()
        except BaseException as failure:
            log.error("run %s: %d received result(s) could not be stored: %s", self.run_id, len(pending),
                      one_line(failure))

    def _done(self) -> int:
        c = self.result.counts
        return c.fetched + c.deleted + c.failed

    def _stopped(self, fallback: str) -> str:
        """Why the pass stopped early: the signal (or whoever asked), else ``fallback``."""
        reason = getattr(self.ctx.cancelled, "reason", None)
        if reason is None:
            return fallback
        planned = self._planned()
        return f"stopped by {reason} after {self._done()} of {planned} connections; what was received is stored"

    def _verdict(self) -> tuple[str, str | None]:
        guard = self.outage.tripped or self.deletions.tripped
        if guard:  # a guard stopped the pass, or refused to store what it would have done
            return "failed", guard
        done, planned = self._done(), self._planned()
        c, problem = self.result.counts, self.source.incomplete
        if self.ctx.cancelled.is_set() and (done < planned or problem):
            return "aborted", self._stopped(f"stopped on request after {done} of {planned or done} connections")
        if self.postponed and not done:
            self.result.deferred = planned
            return "failed", (f"none of the {planned} connection(s) was fetched: the retries that {self.postponed} "
                              "of them needed (backoff or Retry-After) would have ended past the pass's deadline; "
                              "they stay due")
        if not problem and (self.source.out_of_time or (self.ctx.client.deadline is not None and done < planned)):
            self.result.deferred = planned - done  # they stay due: the next pass takes them first
            return ("succeeded" if c.failed == 0 else "partial"), None
        if problem:
            return ("partial" if done else "failed"), problem
        if c.failed == 0:
            return "succeeded", None
        return ("partial" if c.failed < planned else "failed"), None

    def _planned(self) -> int:
        planned = self.source.planned
        return self._done() if planned is None else planned

    def _end(self, status: str, error: str | None = None) -> None:
        r = self.result
        r.planned, r.status, r.error = self._planned(), status, error
        r.requests = self.ctx.client.requests_sent - self._requests_before
        r.seconds = time.monotonic() - self._started
        limiter = self.ctx.client.limiter
        r.rate_limit_wait = (limiter.waited if limiter is not None else 0.0) - self._waited_before
        finished_at = self.ctx.now()
        try:
            with shielded():  # an interruption waits for the run's row to be written
                self.ctx.store.finish_run(r, at=finished_at, error=error)
        finally:
            if self.ctx.metrics is not None:
                self.ctx.metrics.run(r, finished_at=finished_at)

    def _end_quietly(self, status: str, error: str) -> None:
        """End the run while another error is on its way out: a failure to record it is only logged."""
        try:
            self._end(status, error)
        except Exception as failure:
            log.error("could not record the end of run %s: %s", self.run_id, one_line(failure), exc_info=True)
