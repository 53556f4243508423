"""The one clock of the job: timezone-aware UTC. Everything that needs the time takes ``now`` as an argument."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)
