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
from typing import Protocol

Patience = Callable[[float], bool]  # whether a wait of so many seconds is still worth it
# Seconds a shared bucket waits at least after a lease that granted nothing: whatever the ledger says, it
# never asks again within a busy loop (what refills meanwhile is leased together afterwards).
MIN_LEASE_WAIT = 0.05


class _Waits:
    """How a bucket waits: the injected ``sleep`` (tests), else a wait that a cancel cuts short."""

    sleep: Callable[[float], object] | None
    waited: float
    resume_at: float | None = None  # while a request waits for the bucket: when it goes on (time.time())

    def _pause(self, wait: float, cancelled: threading.Event | None, patience: Patience | None) -> bool:
        """Wait ``wait`` seconds and count it; False if ``patience`` refuses the wait or a cancel ends it."""
        if patience is not None and not patience(wait):
            return False
        self.waited += wait
        self.resume_at = time.time() + wait  # for the pass's progress lines
        try:
            if self.sleep is not None:
                self.sleep(wait)
                return True
            return not (cancelled or threading.Event()).wait(wait)
        finally:
            self.resume_at = None


class TokenBucket(_Waits):
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
        self._waiting = threading.Lock()  # one thread waits at a time
        self.waited = 0.0  # seconds spent waiting (wall time); runs report their share

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

    def acquire(self, cancelled: threading.Event | None = None, patience: Patience | None = None) -> bool:
        """Take one token, waiting as long as needed; False if ``cancelled`` was set while waiting, or if
        ``patience`` refuses the wait.

        One thread waits at a time (the others queue behind it), so ``waited`` is wall time.
        """
        if not self.try_acquire():
            return True
        with self._waiting:
            while True:
                wait = self.try_acquire()
                if not wait:
                    return True
                if (cancelled is not None and cancelled.is_set()) or not self._pause(wait, cancelled, patience):
                    return False

    def drain(self, seconds: float) -> None:
        """Empty the bucket for ``seconds`` (a 429 with Retry-After), at most for as long as it takes to refill
        ``capacity`` tokens: the bucket never holds less than ``-capacity``."""
        with self._lock:
            self._refill()
            drained = min(self._tokens, 0.0) - max(0.0, seconds) * self.per_second  # NaN: max() keeps 0.0
            self._tokens = max(-self.capacity, drained)


class Ledger(Protocol):
    """Where a shared bucket's tokens are kept (the database): lease some, or empty it for a while."""

    def lease(self, want: int) -> tuple[int, float]:
        """(tokens granted, seconds until the next one when none was)."""
        ...

    def drain(self, seconds: float) -> None: ...


class Limiter(Protocol):
    """What the client needs of a rate limiter."""

    waited: float
    resume_at: float | None

    def acquire(self, cancelled: threading.Event | None = None, patience: Patience | None = None) -> bool: ...

    def drain(self, seconds: float) -> None: ...


class SharedBucket(_Waits):
    """A bucket kept in a ledger that every process of the job shares; tokens are leased a few at a time.

    A lease (about a second of refill) is one short transaction, taken outside the batch writes, so
    fetching never waits for a batch to commit. Leased tokens are spent locally; one thread leases or
    waits at a time, so ``waited`` is wall time.
    """

    def __init__(self, ledger: Ledger, *, lease: int = 1, sleep: Callable[[float], object] | None = None) -> None:
        """``sleep`` is for tests with a fake clock; by default a wait is real and ends early on cancel."""
        self.ledger = ledger
        self.lease = max(1, lease)
        self.sleep = sleep
        self.waited = 0.0
        self._tokens = 0
        self._lock = threading.Lock()

    def acquire(self, cancelled: threading.Event | None = None, patience: Patience | None = None) -> bool:
        """Take one token, leasing (and waiting) as needed; False if ``cancelled`` was set while waiting,
        or if ``patience`` refuses the wait (the pass would end before a request after it could finish)."""
        with self._lock:
            while self._tokens == 0:
                if cancelled is not None and cancelled.is_set():
                    return False
                granted, wait = self.ledger.lease(self.lease)
                if granted:
                    self._tokens = granted
                    break
                if not self._pause(max(MIN_LEASE_WAIT, wait), cancelled, patience):
                    return False
            self._tokens -= 1
            return True

    def drain(self, seconds: float) -> None:
        """Give back nothing, and empty the shared bucket for ``seconds``: every process backs off."""
        with self._lock:
            self._tokens = 0
            self.ledger.drain(seconds)


# The API's bucket sees a request a little after the job's bucket let it go. After
# an idle spell the API's bucket is full and wastes the refill of that delay, so
# the job keeps one token plus 100 ms of refill below the configured capacity.
HEADROOM_SECONDS = 0.1

_shared: dict[tuple[float, float], TokenBucket] = {}
_shared_lock = threading.Lock()


def below(capacity: float, per_minute: float) -> tuple[float, float]:
    """(capacity, per second) of a bucket that stays under an API bucket of ``capacity`` at ``per_minute``."""
    per_second = per_minute / 60
    return max(1.0, capacity - 1 - per_second * HEADROOM_SECONDS), per_second


def client_bucket(capacity: float, per_minute: float) -> TokenBucket:
    """A bucket that stays under an API bucket of ``capacity`` refilled at ``per_minute`` (with headroom)."""
    inner, per_second = below(capacity, per_minute)
    return TokenBucket(capacity=inner, per_second=per_second)


def shared_bucket(capacity: float, per_minute: float) -> TokenBucket:
    """The process-wide bucket for these settings: every client of the process draws from it."""
    with _shared_lock:
        key = (capacity, per_minute)
        if key not in _shared:
            _shared[key] = client_bucket(capacity, per_minute)
        return _shared[key]
