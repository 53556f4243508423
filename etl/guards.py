"""Guards that stop a pass from writing what a misbehaving API, proxy or URL would make it write.

- ``DeletionGuard``: a 404 that would turn an ``active`` or ``pending`` connection into ``deleted`` is
  held back until the pass ends. If those deletions are more than ``sync.max_deleted_share`` of the
  connections the pass had an answer for (documents, and 404s of live connections; at least
  ``MIN_ANSWERS`` of them, else a share says nothing), none is stored:
  a wrong ``api.base_url`` or a proxy answering 404 for everything must not revoke the whole history.
  ``sync --accept-deletions`` lifts the guard for one run. 404s of connections already deleted (the
  daily re-check) are not held.
- ``OutageGuard``: when the final outcomes of ``sync.outage_after`` different connections in a row are
  server errors or network failures (after their retries, or deferred while waiting to retry one),
  the API is down: the pass stops asking, so that an outage does not spend the application's rate
  budget on thousands of doomed retries. What is left stays due; the next pass probes again.

Either guard ends the run ``failed`` (exit 1) with its reason, which names the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from etl.db.store import Store
from etl.outcomes import Failed, Gone, Postponed, Result

log = logging.getLogger(__name__)
# Fewer answers than this say nothing of a share: a pass of a handful of connections stores its 404s.
MIN_ANSWERS = 10
OUTAGE_KINDS = frozenset({"server", "network", "timeout"})  # an API (or the way to it) that is down


class DeletionGuard:
    """Holds the 404s of live connections until the pass ends, then lets them through or drops them all."""

    def __init__(self, store: Store, *, max_share: float) -> None:
        self.store = store
        self.max_share = max_share
        self.held: list[Gone] = []
        self.tripped: str | None = None  # why the held deletions were dropped
        self.dropped = 0  # how many live connections' deletions were dropped

    def hold(self, outcome: Gone) -> None:
        """Keep a 404 back until ``release``."""
        self.held.append(outcome)

    def release(self, *, answered: int) -> Iterator[Gone]:
        """The held 404s that may be stored, given ``answered`` documents stored in the pass.

        404s of connections that are not live (already deleted) always pass; the live ones pass only if
        they are at most ``max_share`` of the answers (``answered`` plus themselves).
        """
        held, self.held = self.held, []
        live = self.store.live_ids([o.connection_id for o in held])
        doomed = [o for o in held if o.connection_id in live]
        yield from (o for o in held if o.connection_id not in live)
        total = answered + len(doomed)
        if doomed and total >= MIN_ANSWERS and len(doomed) > self.max_share * total:
            self.tripped = (
                f"{len(doomed)} of the {total} connections answered would become deleted, more than "
                f"sync.max_deleted_share ({self.max_share:g}); none was marked deleted. Check api.base_url and "
                "any proxy in front of the API; if these deletions are real, run `smartcar-etl sync "
                "--accept-deletions` once")
            self.dropped = len(doomed)
            log.error("mass deletion held back: %s", self.tripped)
            return
        yield from doomed

    def drop(self) -> int:
        """Drop everything held (the pass was stopped before the guard could judge); how many."""
        n, self.held = len(self.held), []
        return n


class OutageGuard:
    """Counts the connections in a row whose final outcome says the API is down."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.in_a_row: set[str] = set()
        self.tripped: str | None = None

    def see(self, outcome: Result) -> bool:
        """Take one outcome; True when this one makes the guard trip."""
        error = outcome.error if isinstance(outcome, Failed) else outcome.after \
            if isinstance(outcome, Postponed) else None
        if getattr(error, "kind", None) not in OUTAGE_KINDS:
            self.in_a_row.clear()
            return False
        self.in_a_row.add(outcome.connection_id)
        if self.tripped is None and len(self.in_a_row) >= self.limit:
            self.tripped = (f"the API looks down: the last {len(self.in_a_row)} connections failed with server "
                            f"errors or network failures (sync.outage_after is {self.limit}); stopped asking, "
                            "the rest stay due and the next pass tries again")
            log.error("%s", self.tripped)
            return True
        return False
