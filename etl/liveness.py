"""The daemon's liveness, which ``/healthz`` serves beside ``/metrics``: is its scheduler still handling firings?

A firing is handled when the daemon starts on it and again when it is done with it, whatever came of it: a pass
that succeeded or failed, a pass skipped because another process held the lock, a firing another daemon took,
a database that did not answer. The daemon is alive (200) while the last of these happened within twice the
longest period of its applications, counted from start-up before the first; otherwise 503.

An application's period is how far apart its firings may be (``schedule.interval``, or the longest gap between two
firings of ``schedule.cron``) or how long one of its passes may go on starting requests (``sync.max_duration``,
by default that same period), whichever is longer. A firing that comes while the application's previous pass
still runs is dropped (the daemon never overlaps two passes of one application), so twice the period is what a
healthy daemon can take between two beats; a pass stuck past that, or a scheduler that stopped, is not alive.
Whether the passes succeed is for the metrics and the alerts to say: a restart would not mend the API or the
database, and two replicas that share the applications must both stay up while one takes every firing.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from functools import cached_property

from apscheduler.triggers.cron import CronTrigger

from etl.config import Config

# How far ahead the gaps between cron firings are looked for: a year and a day, and at most this many firings (a
# cron firing every minute shows its gap in its first two).
CRON_HORIZON = dt.timedelta(days=366)
CRON_FIRINGS = 1000


def longest_cron_gap(expression: str, start: dt.datetime) -> float:
    """The longest time in seconds between two consecutive firings of a crontab ``expression`` (UTC) after ``start``;
    the horizon itself when fewer than two firings fall within it."""
    trigger = CronTrigger.from_crontab(expression, timezone=dt.UTC)
    end = start + CRON_HORIZON
    longest, previous = 0.0, trigger.get_next_fire_time(None, start)
    for _ in range(CRON_FIRINGS):
        if previous is None or previous > end:
            break
        following = trigger.get_next_fire_time(previous, previous + dt.timedelta(microseconds=1))
        if following is None:
            break
        longest = max(longest, (following - previous).total_seconds())
        previous = following
    return longest or CRON_HORIZON.total_seconds()


def period_seconds(config: Config, start: dt.datetime) -> float:
    """One application's period: its schedule's, or its ``sync.max_duration`` if longer."""
    schedule = config.schedule
    every = longest_cron_gap(schedule.cron, start) if schedule.cron else schedule.interval_seconds
    return max(every, config.sync.max_duration_seconds or 0.0)


class Liveness:
    """When the daemon last handled a firing, and whether that is recent enough (``answer``, for ``/healthz``)."""

    def __init__(self, config: Config, *, now: Callable[[], dt.datetime]) -> None:
        self.config = config
        self.now = now
        self.started = self.last = now()
        self._lock = threading.Lock()

    @cached_property
    def limit_seconds(self) -> float:
        """Twice the longest period of the configured applications (worked out on first use)."""
        return 2 * max(period_seconds(self.config.for_application(name), self.started)
                       for name in self.config.application_names())

    def beat(self) -> None:
        """A firing was taken up, or its handling ended."""
        at = self.now()
        with self._lock:
            self.last = max(self.last, at)

    def answer(self) -> tuple[int, str]:
        """The HTTP status (200 or 503) and a line of text saying why."""
        with self._lock:
            last = self.last
        age, limit = (self.now() - last).total_seconds(), self.limit_seconds
        what = "start-up" if last == self.started else "the last firing was handled"
        if age <= limit:
            return 200, f"alive: {what} {age:.0f}s ago; the limit is {limit:.0f}s\n"
        return 503, f"not alive: {what} {age:.0f}s ago, more than the limit of {limit:.0f}s\n"
