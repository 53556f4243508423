"""A client-side token bucket, so that the job stays under the API's rate limit.

Smartcar's default application limit is a bucket of 120 requests refilled at 2
a minute. Every API request of the process takes a token first (token-endpoint
requests do not: that is another service), waiting for the refill when the
bucket is empty; a 429 then stays rare, and is still handled (Retry-After).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``per_second``; thread-safe."""

    def __init__(
        self,
        *,
        capacity: float,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        """``sleep`` is for tests with a fake clock; by default a wait is real and ends early on cancel."""
        self.capacity = capacity
        self.per_second = per_second
        self.clock = clock
        self.sleep = sleep
        self._tokens = capacity
        self._updated = clock()
        self._lock = threading.Lock()
        self.waited = 0.0  # seconds spent waiting in all; runs report their share

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.per_second)
        self._updated = now

    def try_acquire(self) -> float:
        """Take one token if there is one and return 0; else return the seconds until there is one."""
        with self._lock:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self.per_second

    def acquire(self, cancelled: threading.Event | None = None) -> bool:
        """Take one token, waiting as long as needed; False if ``cancelled`` was set while waiting."""
        while True:
            wait = self.try_acquire()
            if not wait:
                return True
            if cancelled is not None and cancelled.is_set():
                return False
            self.waited += wait
            if self.sleep is not None:
                self.sleep(wait)
            elif (cancelled or threading.Event()).wait(wait):
                return False


# The API's bucket sees a request a little after the job's bucket let it go. After
# an idle spell the API's bucket is full and wastes the refill of that delay, so
# the job keeps one token plus 100 ms of refill below the configured capacity.
HEADROOM_SECONDS = 0.1

_shared: dict[tuple[float, float], TokenBucket] = {}
_shared_lock = threading.Lock()


def client_bucket(capacity: float, per_minute: float) -> TokenBucket:
    """A bucket that stays under an API bucket of ``capacity`` refilled at ``per_minute`` (with headroom)."""
    per_second = per_minute / 60
    return TokenBucket(capacity=max(1.0, capacity - 1 - per_second * HEADROOM_SECONDS), per_second=per_second)


def shared_bucket(capacity: float, per_minute: float) -> TokenBucket:
    """The process-wide bucket for these settings: every client of the process draws from it."""
    with _shared_lock:
        key = (capacity, per_minute)
        if key not in _shared:
            _shared[key] = client_bucket(capacity, per_minute)
        return _shared[key]
