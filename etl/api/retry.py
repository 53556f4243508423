"""Retry policy: capped exponential backoff with jitter, honouring Retry-After."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from etl.api.deadline import Deferred
from etl.config import RetryConfig
from etl.errors import RetriableApiError

T = TypeVar("T")
log = logging.getLogger(__name__)


SECONDS_RE = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() also accepts '²' and '٣'


def parse_retry_after(value: str | None, *, now: Callable[[], dt.datetime]) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date); None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if SECONDS_RE.fullmatch(value):
        return float(value)
    if len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone (RFC 5322)
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - now()).total_seconds())


@dataclass
class RetryPolicy:
    """How often and how long to wait before trying a retriable request again.

    The n-th wait (n = 1, 2, ...) is ``min(max_backoff, initial * 2**(n-1))``
    scaled by a random factor in [0.5, 1] ("equal jitter": it spreads clients
    out but still grows). A Retry-After from the server replaces that wait,
    clamped to ``max_retry_after``. No retry starts when it could not begin
    before ``deadline`` seconds have passed since the first attempt (``clock``
    measures them): the last error is raised instead.
    """

    max_attempts: int = RetryConfig.max_attempts  # the defaults are the config's
    initial_backoff: float = RetryConfig.initial_backoff_seconds
    max_backoff: float = RetryConfig.max_backoff_seconds
    max_retry_after: float = RetryConfig.max_retry_after_seconds
    sleep: Callable[[float], object] = time.sleep
    jitter: Callable[[], float] = random.random
    deadline: float = math.inf
    clock: Callable[[], float] = time.monotonic

    def remaining(self, started: float) -> float:
        """Seconds left of the deadline of a call that started at ``started`` (a ``clock`` reading)."""
        return self.deadline - (self.clock() - started)

    def delay(self, attempt: int, error: RetriableApiError) -> float:
        """How long to wait after failed attempt number ``attempt`` (1-based)."""
        if error.retry_after is not None:
            return min(self.max_retry_after, max(0.0, error.retry_after))
        base = min(self.max_backoff, self.initial_backoff * 2.0 ** (attempt - 1))
        return base * (0.5 + self.jitter() / 2)

    def call(self, attempt_once: Callable[[], T], *, started: float | None = None,
             patience: Callable[[float], bool] | None = None) -> T:
        """Call until it succeeds, raises a non-retriable error, or attempts or time run out (last error raised).

        ``started`` (a ``clock`` reading) lets several calls share one deadline. ``patience`` says whether a
        retry after a wait of so many seconds could still finish within the pass; when it refuses, Deferred
        is raised (the request stays due for the next pass) instead of waiting.
        """
        started = self.clock() if started is None else started
        attempt = 1
        while True:
            try:
                return attempt_once()
            except RetriableApiError as error:
                if attempt >= self.max_attempts:
                    raise
                wait = self.delay(attempt, error)
                if wait >= self.remaining(started):
                    log.info("%s; giving up: a retry in %.1fs would pass the retry deadline of %gs",
                             error, wait, self.deadline)
                    raise
                if patience is not None and not patience(wait):
                    log.info("%s; a retry in %.1fs would end past the pass's deadline: deferred to the next pass",
                             error, wait)
                    raise Deferred(after=error) from error
                log.info("%s; retrying in %.1fs (attempt %d of %d)", error, wait, attempt + 1, self.max_attempts)
                self.sleep(wait)
                attempt += 1
