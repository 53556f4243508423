"""A pass commits as it goes and says how it is doing, whatever the API and the rate budget make it wait for.

``Pending`` holds the answers received and not stored yet. The run loop adds to it and writes a full
batch; a ``Heartbeat`` thread writes it when its oldest answer has waited ``sync.flush_seconds``, and
logs a progress line every ``sync.progress_interval``. At Smartcar's default budget an answer comes
every 30 seconds, and a request can wait minutes for the budget: neither may hold an answer back from
the database, nor leave the operator with silence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from etl.outcomes import BatchCounts, Outcome
from etl.stop import shielded

log = logging.getLogger(__name__)
TICK = 0.5  # seconds between the heartbeat's looks: an answer is stored at most this late after its time


class Pending:
    """The outcomes waiting to be stored, written in batches by the run loop or by the heartbeat; thread-safe.

    ``write`` stores a batch (and counts it). An error it raises in the heartbeat's thread is kept and
    raised in the run loop's, at its next ``add`` or ``flush``.
    """

    def __init__(self, write: Callable[[list[Outcome]], BatchCounts], *, size: int, flush_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.size = size
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.outcomes: list[Outcome] = []
        self.oldest: float | None = None  # when the oldest outcome waiting arrived
        self.failure: BaseException | None = None
        self._lock = threading.RLock()

    def add(self, outcome: Outcome) -> None:
        """Keep one outcome; a full batch is written at once."""
        with self._lock:
            self._raise_failure()
            if not self.outcomes:
                self.oldest = self.clock()
            self.outcomes.append(outcome)
            if len(self.outcomes) >= self.size:
                self._write()

    def extend(self, outcomes: list[Outcome]) -> None:
        """Keep several outcomes (written in full batches)."""
        for outcome in outcomes:
            self.add(outcome)

    def flush(self) -> None:
        """Write whatever waits."""
        with self._lock:
            self._raise_failure()
            if self.outcomes:
                self._write()

    def flush_if_due(self) -> None:
        """Write what waits if its oldest outcome has waited ``flush_seconds`` (the heartbeat's call)."""
        with self._lock:
            if self.failure is None and self.oldest is not None and self.clock() - self.oldest >= self.flush_seconds:
                try:
                    self._write()
                except BaseException as error:  # raised again in the run loop's thread
                    self.failure = error

    def __len__(self) -> int:
        return len(self.outcomes)

    def _write(self) -> None:
        batch, self.outcomes, self.oldest = self.outcomes, [], None
        try:
            with shielded():  # an interruption waits for the write: the batch is stored whole or not at all
                self.write(batch)
        except Exception:
            self.outcomes = batch + self.outcomes  # not stored: the run loop decides what becomes of them
            raise

    def _raise_failure(self) -> None:
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure


class Heartbeat:
    """A thread that, while a pass runs, writes ``pending`` when it is due and logs ``report()`` at intervals."""

    def __init__(self, pending: Pending, *, report: Callable[[], tuple[str, dict[str, Any]]], interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pending = pending
        self.report = report
        self.interval = interval
        self.clock = clock
        self.next_report = clock() + interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def tick(self) -> None:
        """One look: store what is due, and say how the pass is doing when it is time to."""
        self.pending.flush_if_due()
        if self.clock() >= self.next_report:
            self.next_report = self.clock() + self.interval
            line, fields = self.report()
            log.info(line, extra={"progress": fields})

    def _run(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.tick()
            except Exception as error:  # a progress line must never end the pass
                log.warning("could not report the pass's progress: %s", error)
