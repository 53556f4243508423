"""Per-connection cadence: when a connection is due to be fetched again.

- After a successful fetch, a connection is due ``interval`` after the start of
  the pass that fetched it, less 10 %: the next scheduled pass takes it even if
  that pass starts a little early, while a second daemon starting right after
  does not fetch it again.
- After a failed fetch, it waits ``retry_failed_after``, doubling with each
  failure in a row up to ``retry_failed_max``, instead of being retried every pass.
- After a 404 (deleted), it is re-checked every ``recheck_deleted``, so that one
  that comes back is noticed.

``sync --all`` ignores due times.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from etl.config import ScheduleConfig

EARLY = 0.1  # how much earlier than a whole interval a fetched connection is due again


@dataclass(frozen=True)
class Cadence:
    """Due times after success, failure and deletion."""

    interval: dt.timedelta = dt.timedelta(minutes=15)
    retry_failed_after: dt.timedelta = dt.timedelta(minutes=5)
    retry_failed_max: dt.timedelta = dt.timedelta(hours=6)
    recheck_deleted: dt.timedelta = dt.timedelta(days=1)

    @classmethod
    def from_config(cls, schedule: ScheduleConfig) -> Cadence:
        """The cadence the config's ``schedule`` section describes."""
        return cls(
            interval=dt.timedelta(seconds=schedule.interval_seconds),
            retry_failed_after=dt.timedelta(seconds=schedule.retry_failed_after_seconds),
            retry_failed_max=dt.timedelta(seconds=schedule.retry_failed_max_seconds),
            recheck_deleted=dt.timedelta(seconds=schedule.recheck_deleted_seconds),
        )

    def after_success(self, pass_started_at: dt.datetime) -> dt.datetime:
        """Due time of a connection the pass that started at ``pass_started_at`` fetched."""
        return pass_started_at + self.interval * (1 - EARLY)

    def after_failure(self, failed_at: dt.datetime, failures_in_a_row: int) -> dt.datetime:
        """Due time after the ``failures_in_a_row``-th failure in a row (1, 2, ...)."""
        doublings = min(max(failures_in_a_row - 1, 0), 30)
        return failed_at + min(self.retry_failed_max, self.retry_failed_after * (1 << doublings))

    def after_gone(self, observed_at: dt.datetime) -> dt.datetime:
        """Due time of a connection the API answered 404 for."""
        return observed_at + self.recheck_deleted
