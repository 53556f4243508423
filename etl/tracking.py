"""Which connection ids are tracked: add, import, list, untrack."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import Engine, func, select, update

from etl.api.client import utcnow
from etl.api.documents import canonical_id
from etl.db.engine import require_migrated, translate_errors
from etl.db.models import connections, permission_grants
from etl.db.upsert import upsert
from etl.errors import InvalidIdError
from etl.files import open_bounded, read_lines


def parse_ids(values: Iterable[tuple[str, str | None]]) -> list[str]:
    """Canonical ids from (where, value) pairs; a None value stands for a line that is not UTF-8.

    The whole value must be a UUID (a trailing newline or space is not part of
    one). Every bad value is reported with where it stood, and then none is
    returned, so nothing half-valid is stored or sent. Duplicates are kept
    once, in order.
    """
    ids: dict[str, None] = {}
    bad: list[tuple[str, str | None]] = []
    count = 0
    for where, value in values:
        canonical = canonical_id(value)
        if canonical is None:
            count += 1
            if len(bad) < InvalidIdError.SHOWN:
                bad.append((where, value[: InvalidIdError.CLIP * 4] if value is not None else None))
        else:
            ids[canonical] = None
    if bad:
        raise InvalidIdError(bad, total=count)
    return list(ids)


def ids_from_arguments(arguments: Iterable[str]) -> list[str]:
    """Canonical ids from command-line arguments, each exactly a UUID."""
    return parse_ids((f"argument {number}", value) for number, value in enumerate(arguments, start=1))


def ids_from_file(name: str) -> list[str]:
    """Canonical ids from a file (``-``: standard input): one a line, blank lines and ``#`` comments skipped.

    The file is read within the size limit of ``etl.files``; a line that is not
    UTF-8 is reported with its number, like an id that is not a UUID.
    """
    source = "stdin" if name == "-" else name

    def values(file: BinaryIO) -> Iterator[tuple[str, str | None]]:
        for number, line in read_lines(file, where=source):
            text = line.split("#", 1)[0].strip() if line is not None else None
            if text != "":
                yield f"{source}, line {number}", text

    with open_bounded(name, where=source, allow_stdin=True) as file:
        return parse_ids(values(file))


@dataclass(frozen=True)
class TrackResult:
    """How many ids were new, tracked again, or already tracked."""

    added: int
    retracked: int
    unchanged: int


CHUNK = 500  # ids per statement: well under SQLite's limit on bound parameters


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def track(engine: Engine, ids: list[str], *, now: Callable[[], dt.datetime] = utcnow) -> TrackResult:
    """Start tracking ``ids`` (already canonical); untracked ones are tracked again. One transaction."""
    require_migrated(engine)
    at = now()
    added = retracked = 0
    with translate_errors(engine), engine.begin() as conn:
        for chunk in _chunks(ids):
            known = dict(conn.execute(
                select(connections.c.id, connections.c.tracked).where(connections.c.id.in_(chunk))
            ).all())
            new = [{"id": i, "status": "pending", "tracked": True, "tracked_at": at}
                   for i in chunk if i not in known]
            upsert(conn=conn, table=connections, key=["id"], update=[], rows=new)
            again = [i for i, tracked in known.items() if not tracked]
            if again:
                conn.execute(update(connections).where(connections.c.id.in_(again))
                             .values(tracked=True, tracked_at=at))
            added += len(new)
            retracked += len(again)
    return TrackResult(added=added, retracked=retracked, unchanged=len(ids) - added - retracked)


def untrack(engine: Engine, ids: list[str]) -> tuple[int, list[str]]:
    """Stop polling ``ids``; rows and history stay. Returns (untracked count, ids that were unknown)."""
    require_migrated(engine)
    changed = 0
    unknown: list[str] = []
    with translate_errors(engine), engine.begin() as conn:
        for chunk in _chunks(ids):
            known = set(conn.scalars(select(connections.c.id).where(connections.c.id.in_(chunk))))
            unknown += [i for i in chunk if i not in known]
            changed += conn.execute(
                update(connections).where(connections.c.id.in_(known), connections.c.tracked.is_(True))
                .values(tracked=False)
            ).rowcount
    return changed, unknown


LIST_COLUMNS = ("connection_id", "status", "tracked", "user_id", "vehicle_id", "permissions",
                "last_success_at", "last_attempt_at", "last_error")


def list_connections(engine: Engine, *, include_untracked: bool = False) -> list[dict[str, Any]]:
    """Connections with status, open permission count, last success and last error."""
    require_migrated(engine)
    c = connections.c
    held = (
        select(permission_grants.c.connection_id, func.count().label("n"))
        .where(permission_grants.c.valid_to.is_(None))
        .group_by(permission_grants.c.connection_id)
        .subquery()
    )
    query = (
        select(c.id, c.status, c.tracked, c.user_id, c.vehicle_id, func.coalesce(held.c.n, 0).label("n"),
               c.last_success_at, c.last_attempt_at, c.last_error)
        .outerjoin_from(connections, held, held.c.connection_id == c.id)
        .order_by(c.id)
    )
    if not include_untracked:
        query = query.where(c.tracked.is_(True))
    with translate_errors(engine), engine.connect() as conn:
        return [
            {
                "connection_id": row.id, "status": row.status, "tracked": bool(row.tracked),
                "user_id": row.user_id, "vehicle_id": row.vehicle_id, "permissions": row.n,
                "last_success_at": row.last_success_at, "last_attempt_at": row.last_attempt_at,
                "last_error": row.last_error,
            }
            for row in conn.execute(query)
        ]
