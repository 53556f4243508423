"""Derive the history again from the document archive, with the code that sync uses (``store_batch``).

Every archived span is replayed as observations in time order: its first sighting, and its last one
when that is later. Each document is validated again, so a fix to the parser reaches the past; one that
still fails counts as a failed fetch (which changes nothing in the rebuilt tables). Rebuilt: users,
vehicles, the connections' fields that documents set (user, vehicle, status, source times, first and
last seen, last success), every grant and change (``run_id`` from the spans). A connection's schedule
and failure columns (due time, last attempt and error, failure count) are kept as they were.

Before it changes anything, every body a span will replay is verified (``verify``): that it decompresses,
is the document its digest was taken of, parses as JSON, and is the span's connection's. One that is not
refuses the whole rebuild (``UnverifiableArchive``, exit 2, naming the spans): skipping it would drop that
connection's history, and replaying it would replay whatever it now says. The replay checks each body again
as it reads it.

All in one transaction; ``dry_run`` rolls it back after counting what would differ.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    union,
    update,
)

from etl.api.documents import VEHICLE_FIELDS, canonical_id, decode_json, parse_resource
from etl.db.archive import Archiving, verified
from etl.db.batch import store_batch
from etl.db.dialects import dialect_for
from etl.db.models import (
    archive_bodies,
    archive_spans,
    connections,
    permission_changes,
    permission_grants,
    users,
    vehicles,
)
from etl.errors import MalformedDocumentError, UnverifiableArchive, Unverified
from etl.outcomes import Fetched, Gone, Outcome

BATCH = 500
# What rebuild derives, table by table (permission_changes without its surrogate id).
DERIVED: dict[str, tuple[Table, tuple[str, ...]]] = {
    "users": (users, ("id", "first_seen_at", "last_seen_at")),
    "vehicles": (vehicles, ("id", *VEHICLE_FIELDS, "first_seen_at", "last_seen_at")),
    "connections": (connections, ("id", "user_id", "vehicle_id", "status", "source_created_at",
                                  "source_updated_at", "first_seen_at", "last_seen_at", "last_success_at")),
    "permission_grants": (permission_grants, ("connection_id", "permission", "valid_from", "valid_to")),
    "permission_changes": (permission_changes, ("connection_id", "permission", "change", "observed_at",
                                                "previous_observed_at", "source_updated_at", "run_id")),
}
# The connection columns that sync's bookkeeping sets and rebuild keeps.
KEPT = ("last_attempt_at", "last_error", "consecutive_failures", "next_due_at")
SHOWN = 10


@dataclass
class RebuildResult:
    """Per table, the rows the rebuild removed and added (a changed row counts once each way)."""

    removed: dict[str, int] = field(default_factory=dict)
    added: dict[str, int] = field(default_factory=dict)
    observations: int = 0
    still_rejected: int = 0

    @property
    def differs(self) -> bool:
        return any(self.removed.values()) or any(self.added.values())


@dataclass(frozen=True)
class _Event:
    span_id: int
    connection_id: str
    at: dt.datetime
    run_id: int | None
    body_id: int | None  # the document's archive_bodies row; None: a 404
    starts_span: bool


def uncovered(conn: Connection) -> tuple[list[str], int]:
    """Connections with observations the archive does not hold (the first ``SHOWN`` of them, and how many).

    Each of these must be a sighting inside an archived span: a connection's first sighting, its last
    document and its last success (an answer: a document or a 404), and every change; and a change's
    previous sighting must be where a span ends. A pass with the archive off breaks one of them for every
    connection whose history it touched (a refused document archived later stands for none of them).
    Reads the spans' columns: ``settle`` first.

    A change inside a span is covered: it is the span's start, or (the same document, which validation
    refused at first and accepted later, after a parser change) a sighting the span stands for.
    """
    c, s, pc = connections.c, archive_spans.c, permission_changes.c

    def outside(connection_id: ColumnElement[str], at: ColumnElement[dt.datetime], *more: ColumnElement[bool]
                ) -> ColumnElement[bool]:
        return and_(at.is_not(None), ~exists().where(
            s.connection_id == connection_id, s.first_seen_at <= at, s.last_seen_at >= at, *more))

    document = s.body_id.is_not(None)
    every = union(
        select(c.id).where(or_(outside(c.id, c.first_seen_at, document), outside(c.id, c.last_seen_at, document),
                               outside(c.id, c.last_success_at))),
        select(pc.connection_id).where(outside(pc.connection_id, pc.observed_at)),
        select(pc.connection_id).where(pc.previous_observed_at.is_not(None), ~exists().where(
            s.connection_id == pc.connection_id, s.last_seen_at == pc.previous_observed_at)),
    ).subquery()
    total = conn.scalar(select(func.count()).select_from(every)) or 0
    shown = list(conn.scalars(select(every.c.id).order_by(every.c.id).limit(SHOWN)))
    return shown, total


def rebuild(conn: Connection) -> RebuildResult:
    """Rebuild the derived tables from the archive in the caller's transaction; what changed.
    ``UnverifiableArchive`` before it changes anything when a body cannot be verified (``verify``)."""
    verify(conn)
    before = snapshot(conn)
    kept = [dict(row._mapping) for row in conn.execute(select(connections.c.id, *(connections.c[k] for k in KEPT)))]
    conn.execute(delete(permission_changes))
    conn.execute(delete(permission_grants))
    conn.execute(update(connections).values(
        user_id=None, vehicle_id=None, status="pending", source_created_at=None, source_updated_at=None,
        first_seen_at=None, last_seen_at=None, last_success_at=None))
    conn.execute(delete(users))
    conn.execute(delete(vehicles))
    result = RebuildResult()
    for run_id, batch in _batches(_events(conn)):
        outcomes = _outcomes(batch, _bodies(conn, {e.body_id for e in batch}), result)
        store_batch(conn=conn, run_id=run_id, outcomes=outcomes, archive=Archiving.LEAVE)
    if kept:
        conn.execute(update(connections).where(connections.c.id == bindparam("b_id")).values(
            **{k: bindparam(f"b_{k}") for k in KEPT}), [{f"b_{k}": v for k, v in row.items()} for row in kept])
    after = snapshot(conn)
    for name in DERIVED:
        result.removed[name] = sum((before[name] - after[name]).values())
        result.added[name] = sum((after[name] - before[name]).values())
    return result


def verify(conn: Connection) -> None:
    """Read every body an archived span refers to, a page of spans at a time; ``UnverifiableArchive`` naming
    the spans (the first ``SHOWN``, and how many) whose body ``_checked`` refuses. Reads, never writes."""
    bad: list[Unverified] = []
    total = 0
    for page in _span_pages(conn):
        bodies = _bodies(conn, {span.body_id for span in page})
        for span in page:
            _, reason = _checked(span.connection_id, bodies.get(span.body_id))
            if reason is not None:
                total += 1
                if len(bad) < UnverifiableArchive.SHOWN:
                    bad.append(Unverified(span.id, span.body_id, span.connection_id, reason))
    if total:
        raise UnverifiableArchive(bad, total=total)


def _span_pages(conn: Connection) -> Iterator[Sequence[Any]]:
    """The spans with a document, ``BATCH`` at a time in id order (keyset pages: memory stays bounded)."""
    s = archive_spans.c
    query = select(s.id, s.connection_id, s.body_id).where(s.body_id.is_not(None)).order_by(s.id).limit(BATCH)
    page = conn.execute(query).all()
    while page:
        yield page
        page = conn.execute(query.where(s.id > page[-1].id)).all() if len(page) == BATCH else []


def _bodies(conn: Connection, ids: set[int | None]) -> dict[int, Any]:  # archive_bodies rows
    """These archive_bodies rows, by id."""
    wanted = sorted(i for i in ids if i is not None)
    if not wanted:
        return {}
    b = archive_bodies.c
    rows = conn.execute(select(b.id, b.connection_id, b.digest, b.compressed, b.body, b.rejected)
                        .where(dialect_for(conn).among(b.id, wanted)))
    return {row.id: row for row in rows}


def _checked(connection_id: str, body: Any) -> tuple[Any, str | None]:
    """(the document as JSON, None) when ``body`` is sound and ``connection_id``'s, else (None, why not).

    Sound: it decompresses, its SHA-256 is its digest (``verified``), and it is JSON. The connection's: the
    body row is the connection's, and an accepted document's ``id`` is the connection's too (a rejected
    one may name another id, or none).
    """
    if body is None:
        return None, "its body is missing"
    try:
        document = decode_json(verified(bool(body.compressed), bytes(body.body), body.digest))
    except ValueError as error:
        return None, str(error)
    if body.connection_id != connection_id:
        return None, f"the body is connection {body.connection_id}'s"
    named = canonical_id(document.get("id")) if isinstance(document, dict) else None
    if not body.rejected and named != connection_id:
        return None, f"the document is {f'connection {named}' if named else 'of no connection'}'s"
    return document, None


def snapshot(conn: Connection) -> dict[str, Counter[tuple[object, ...]]]:
    """Every derived row, as a multiset per table (what ``rebuild`` compares)."""
    return {name: Counter(tuple(row) for row in conn.execute(select(*(table.c[c] for c in columns))))
            for name, (table, columns) in DERIVED.items()}


def _events(conn: Connection) -> Iterator[_Event]:
    """Every archived observation worth replaying, in time order (a span's last sighting after its first)."""
    s = archive_spans.c
    rows = conn.execute(select(s.id, s.connection_id, s.first_seen_at, s.last_seen_at, s.run_id, s.body_id))
    events: list[_Event] = []
    for row in rows:
        events.append(_Event(row.id, row.connection_id, row.first_seen_at, row.run_id, row.body_id, True))
        if row.last_seen_at > row.first_seen_at:
            events.append(_Event(row.id, row.connection_id, row.last_seen_at, row.run_id, row.body_id, False))
    events.sort(key=lambda e: (e.at, e.connection_id))
    return iter(events)


def _batches(events: Iterator[_Event]) -> Iterator[tuple[int | None, list[_Event]]]:
    """Batches for ``store_batch``: one observation per connection each, and one run (that of the spans they
    start; a later sighting creates no change, so its run does not matter)."""
    batch: list[_Event] = []
    ids: set[str] = set()
    run_id: int | None = None
    starts = False  # the batch holds a span's start: its run is the batch's
    for event in events:
        other_run = event.starts_span and starts and event.run_id != run_id
        if batch and (len(batch) >= BATCH or event.connection_id in ids or other_run):
            yield run_id, batch
            batch, ids, run_id, starts = [], set(), None, False
        if event.starts_span and not starts:
            run_id, starts = event.run_id, True
        batch.append(event)
        ids.add(event.connection_id)
    if batch:
        yield run_id, batch


def _outcomes(batch: Sequence[_Event], bodies: dict[int, Any], result: RebuildResult) -> list[Outcome]:
    """The batch's observations, each document checked (``_checked``: ``verify`` found it sound, so one that
    is not any more was changed since: refused, and the transaction rolls back) and validated again; one
    that validation still refuses counts as a failed fetch, which changes nothing rebuilt."""
    outcomes: list[Outcome] = []
    for event in batch:
        result.observations += 1
        if event.body_id is None:
            outcomes.append(Gone(event.connection_id, event.at))
            continue
        document, reason = _checked(event.connection_id, bodies.get(event.body_id))
        if reason is not None:
            raise UnverifiableArchive([Unverified(event.span_id, event.body_id, event.connection_id, reason)])
        try:
            record = parse_resource(document, expected_id=event.connection_id,
                                    path=f"/connections/{event.connection_id}")
        except MalformedDocumentError:
            result.still_rejected += 1
            continue
        outcomes.append(Fetched(event.connection_id, event.at, record))
    return outcomes
