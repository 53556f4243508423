"""When a pass must end, and whether a request can still finish before then.

A pass with ``--max-duration`` stops starting requests that cannot finish in
time: a request starts only if the time left covers the expected answer time
(the 95th percentile of the answers seen so far, capped by the request deadline;
one second before any answer is seen) plus any wait for the rate limit. A
request that does start gets no more than the time left as its deadline.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from collections.abc import Callable


class Cancelled(Exception):
    """The run was cancelled while this request waited or was about to be sent."""


class Deferred(Cancelled):
    """Not sent: the pass would end before an answer could come (``sync --max-duration``); it stays due.

    ``after``: the retriable error whose retry was deferred (its wait would have ended past the deadline).
    """

    def __init__(self, after: Exception | None = None) -> None:
        self.after = after
        super().__init__(str(after) if after is not None else "deferred to the next pass")


FIRST_ESTIMATE = 1.0  # seconds, before any answer was timed
SAMPLES = 200  # answer times kept for the percentile


class PassDeadline:
    """The end of a pass on the pass's clock, and the answer times seen so far; thread-safe."""

    def __init__(self, *, seconds: float, now: Callable[[], dt.datetime], cap: float) -> None:
        self.now = now
        self.end = now() + dt.timedelta(seconds=seconds)
        self.cap = cap
        self._times: deque[float] = deque(maxlen=SAMPLES)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """One answer took ``seconds``."""
        with self._lock:
            self._times.append(seconds)

    def estimate(self) -> float:
        """The expected answer time: p95 of those seen (nearest rank), capped; FIRST_ESTIMATE before any."""
        with self._lock:
            times = sorted(self._times)
        if not times:
            return min(self.cap, FIRST_ESTIMATE)
        return min(self.cap, times[min(len(times) - 1, int(0.95 * len(times)))])

    def left(self) -> float:
        """Seconds until the end (negative once it has passed)."""
        return (self.end - self.now()).total_seconds()

    def allows(self, wait: float = 0.0) -> bool:
        """Whether a request started after ``wait`` seconds could still finish in time."""
        return self.left() >= wait + self.estimate()
