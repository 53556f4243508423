"""What fetching one connection gave (``Fetched``, ``Gone``, ``Failed``) and what storing a batch counted.

Fetching produces these, the store writes them; neither needs the other's module.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields

from etl.api.documents import ConnectionRecord
from etl.errors import ApiError


@dataclass(frozen=True)
class Fetched:
    """The API returned the connection."""

    connection_id: str
    observed_at: dt.datetime
    record: ConnectionRecord


@dataclass(frozen=True)
class Gone:
    """The API answered 404: the connection no longer exists."""

    connection_id: str
    observed_at: dt.datetime


@dataclass(frozen=True)
class Failed:
    """The fetch failed (retries exhausted, malformed document, other 4xx, a row the database refused)."""

    connection_id: str
    observed_at: dt.datetime
    error: ApiError


Outcome = Fetched | Gone | Failed


@dataclass(frozen=True)
class Postponed:
    """A retry of the fetch would have ended past the pass's deadline: nothing is stored, it stays due.

    ``after``: the retriable error (a 429, a 5xx, a timeout) whose retry was deferred.
    """

    connection_id: str
    observed_at: dt.datetime
    after: ApiError


Result = Outcome | Postponed  # what a source yields; the run loop stores the outcomes


@dataclass
class BatchCounts:
    """What a batch (or a run) stored."""

    fetched: int = 0
    changed: int = 0
    deleted: int = 0
    failed: int = 0
    granted: int = 0
    revoked: int = 0
    nulled: int = 0  # descriptive fields stored as NULL (a value no column can hold)

    def add(self, other: BatchCounts) -> None:
        """Add another batch's counts to these."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
