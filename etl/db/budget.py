"""The Store's rate budget verbs: a token bucket per application, shared by every process through its row."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update

from etl.db.models import rate_budgets
from etl.db.transactions import Transactions

log = logging.getLogger("etl.db.store")
EPSILON = 1e-9  # refill sums in floating point: 0.9 + 0.1 may be 0.9999999999999999
# Seconds a lease that granted nothing waits at least: what refills in that time is leased together
# afterwards, so the floor costs no throughput, and a process never spins one transaction a millisecond.
MIN_WAIT = 0.05


@dataclass(frozen=True)
class Bucket:
    """A token bucket's shape: how many tokens it holds, and how fast it refills."""

    capacity: float
    per_second: float


@dataclass(frozen=True)
class Lease:
    """What a lease got: tokens granted, how long until the next one when none was, and what is left."""

    granted: int
    wait: float
    tokens: float


def _bounded(tokens: float, capacity: float) -> float:
    """``tokens`` within [-capacity, capacity]: a Retry-After, however long, costs at most one bucket's refill
    (NaN, which no comparison admits, reads as -capacity)."""
    return min(capacity, max(-capacity, tokens))



class RateBudget(Transactions):
    """Lease, drain and read the shared token bucket (``Store.lease_tokens`` and the rest)."""

    def lease_tokens(self, key: str, *, want: int, bucket: Bucket, at: dt.datetime | None = None) -> Lease:
        """Take up to ``want`` tokens from the application's bucket, in one short transaction.

        The bucket refills continuously at ``bucket.per_second`` up to ``bucket.capacity`` (the row
        follows the configuration), and never holds less than ``-capacity``. Time is ``at`` when given
        (tests), else the database server's clock where there is one, else this machine's; a row updated
        in the future (the clock stepped back) counts from now. Row-locked on PostgreSQL and MariaDB,
        ``BEGIN IMMEDIATE`` on SQLite: two processes never take the same token. A lease that grants
        nothing waits at least ``MIN_WAIT``.
        """
        with self._write() as conn:
            now = at or self.dialect.server_now(conn) or dt.datetime.now(dt.UTC)
            row = conn.execute(select(rate_budgets).where(rate_budgets.c.key == key).with_for_update()).first()
            tokens = bucket.capacity if row is None else self._refilled(key, row, now, bucket)
            granted = min(want, int(tokens + EPSILON)) if tokens + EPSILON >= 1 else 0  # 0.999...: a token
            tokens -= granted
            values = {"capacity": bucket.capacity, "per_second": bucket.per_second, "tokens": tokens,
                      "updated_at": now}
            if row is None:
                conn.execute(insert(rate_budgets).values(key=key, **values))
            else:
                conn.execute(update(rate_budgets).where(rate_budgets.c.key == key).values(**values))
        wait = 0.0 if granted else max(MIN_WAIT, (1 - tokens) / bucket.per_second)
        return Lease(granted=granted, wait=wait, tokens=tokens)

    def _refilled(self, key: str, row: Any, now: dt.datetime, bucket: Bucket) -> float:
        """The row's tokens refilled up to ``now``, within [-capacity, capacity]; a future ``updated_at`` is now."""
        if row.updated_at > now and key not in self._future_seen:
            self._future_seen.add(key)
            log.info("rate budget %r: last updated at %s, after now (%s): the clock stepped back? Counting from now",
                     key[:40], row.updated_at.isoformat(), now.isoformat())
        elapsed = max(0.0, (now - row.updated_at).total_seconds())
        tokens = _bounded(row.tokens, bucket.capacity)
        return float(min(bucket.capacity, tokens + elapsed * bucket.per_second))

    def drain_tokens(self, key: str, *, seconds: float, at: dt.datetime | None = None) -> None:
        """Empty the bucket for ``seconds`` (a 429 with Retry-After): every process backs off that long,
        at most as long as it takes to refill ``capacity`` tokens (the bucket never holds less than -capacity)."""
        with self._write() as conn:
            now = at or self.dialect.server_now(conn) or dt.datetime.now(dt.UTC)
            row = conn.execute(select(rate_budgets).where(rate_budgets.c.key == key).with_for_update()).first()
            if row is None:
                return
            tokens = _bounded(-max(0.0, seconds) * row.per_second, row.capacity)  # NaN: max() keeps 0.0
            conn.execute(update(rate_budgets).where(rate_budgets.c.key == key)
                         .values(tokens=tokens, updated_at=now))

    def budget_tokens(self, key: str, *, at: dt.datetime, empty: float) -> float:
        """The tokens in the bucket at ``at``, refilled since its last lease (``empty`` before the first)."""
        row = self.budget(key)
        if row is None:
            return empty
        elapsed = max(0.0, (at - row.updated_at).total_seconds())
        return float(min(row.capacity, _bounded(row.tokens, row.capacity) + elapsed * row.per_second))

    def budget(self, key: str) -> Any:
        """The bucket's row (capacity, per_second, tokens, updated_at), or None before the first request."""
        with self.read() as conn:
            return conn.execute(select(rate_budgets).where(rate_budgets.c.key == key)).first()
