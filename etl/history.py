"""Permission history: compare what the API shows with the open grants, derive the changes.

Pure functions over plain data; ``etl.db.batch`` loads the open grants and writes
the result in the same transaction as the upsert. The rules (CONTRACT.md):

- a first fetch grants every permission it shows;
- a later fetch records exactly what was added and removed (order and
  duplicates inside the API's list mean nothing);
- a deletion (404) revokes everything still held; a return is a first fetch again;
- the same state again writes nothing.

Each change also has a ``kind``: ``first_seen`` (a first observation's grants), ``granted``, ``revoked``,
``disconnected`` (a revocation because the connection went away) and ``reconnected`` (a grant because it
came back); ``change`` stays ``granted`` or ``revoked``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Observation:
    """What one successful fetch showed: a permission set, or ``None`` for a 404."""

    connection_id: str
    observed_at: dt.datetime
    permissions: frozenset[str] | None
    source_updated_at: dt.datetime | None = None


@dataclass
class HistoryDelta:
    """Rows to write: grants to open and close, and the change log."""

    open_grants: list[dict[str, object]] = field(default_factory=list)
    close_grants: list[dict[str, object]] = field(default_factory=list)
    changes: list[dict[str, object]] = field(default_factory=list)
    changed_connections: set[str] = field(default_factory=set)

    @property
    def granted(self) -> int:
        """How many permissions were granted."""
        return len(self.open_grants)

    @property
    def revoked(self) -> int:
        """How many permissions were revoked."""
        return len(self.close_grants)


def diff(
    observations: Iterable[Observation],
    *,
    held: Mapping[str, set[str]],
    previous_observed_at: Mapping[str, dt.datetime | None],
    run_id: int | None,
    deleted: Collection[str] = (),
) -> HistoryDelta:
    """Compare each observation with the permissions ``held`` (open grants) by its connection; ``deleted``: the
    connections stored as deleted (their grants are a return)."""
    delta = HistoryDelta()
    for obs in observations:
        now_held = obs.permissions or frozenset()
        before = held.get(obs.connection_id, set())
        previous = previous_observed_at.get(obs.connection_id)
        grant = "first_seen" if previous is None else "reconnected" if obs.connection_id in deleted else "granted"
        for permission in sorted(now_held - before):
            delta.open_grants.append({
                "connection_id": obs.connection_id, "permission": permission,
                "valid_from": obs.observed_at, "valid_to": None,
            })
            delta.changes.append(_change(obs, permission, ("granted", grant), previous, run_id))
        revoke = "disconnected" if obs.permissions is None else "revoked"
        for permission in sorted(before - now_held):
            delta.close_grants.append({
                "b_connection_id": obs.connection_id, "b_permission": permission,
                "b_valid_to": obs.observed_at,
            })
            delta.changes.append(_change(obs, permission, ("revoked", revoke), previous, run_id))
        if now_held != before:
            delta.changed_connections.add(obs.connection_id)
    return delta


def _change(
    obs: Observation, permission: str, change: tuple[str, str], previous: dt.datetime | None, run_id: int | None
) -> dict[str, object]:
    """One change row; ``change`` is (change, kind)."""
    return {
        "connection_id": obs.connection_id,
        "permission": permission,
        "change": change[0],
        "kind": change[1],
        "observed_at": obs.observed_at,
        "previous_observed_at": previous,
        "source_updated_at": obs.source_updated_at,
        "run_id": run_id,
    }
