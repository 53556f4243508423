"""The document archive: what the API sent, kept so that the history can be shown and derived again.

Every successful fetch (per id or from the listing), every confirmed 404 and every document that
validation rejected (it was JSON, within the size cap) is an observation. Each distinct document of a
connection is kept once (``archive_bodies``, by the sha256 of its canonical JSON, zlib-compressed when
that is smaller); each run of identical observations is one ``archive_spans`` row (body, or none for a
404; first and last seen; the run that saw it first). A network failure or a 5xx is no observation and
archives nothing.

An unchanged observation writes nothing to the archive: the current span's last sighting is the
connection's ``last_success_at`` until the span ends (``last_seen``), and its column is written then.

Written in the batch's transaction, set-based like the rest of the batch (``store_batch``).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, bindparam, case, exists, func, select, update

from etl.api.documents import decode_json
from etl.db.dialects import dialect_for
from etl.db.models import archive_bodies, archive_spans, connections
from etl.errors import MalformedDocumentError
from etl.outcomes import Failed, Fetched, Gone, Outcome


@dataclass(frozen=True)
class Seen:
    """One archived observation: a document (None: the API answered 404), and whether validation refused it."""

    connection_id: str
    observed_at: dt.datetime
    document: bytes | None
    rejected: bool = False
    digest: str | None = field(init=False)  # sha256 of the document, hex

    def __post_init__(self) -> None:
        digest = None if self.document is None else hashlib.sha256(self.document).hexdigest()
        object.__setattr__(self, "digest", digest)


def observations(outcomes: Sequence[Outcome]) -> list[Seen]:
    """The outcomes that are observations: fetched, gone, or rejected with a document to keep."""
    seen: list[Seen] = []
    for o in outcomes:
        if isinstance(o, Fetched) and o.record.document:
            seen.append(Seen(o.connection_id, o.observed_at, o.record.document))
        elif isinstance(o, Gone):
            seen.append(Seen(o.connection_id, o.observed_at, None))
        elif isinstance(o, Failed) and isinstance(o.error, MalformedDocumentError) and o.error.document:
            seen.append(Seen(o.connection_id, o.observed_at, o.error.document, rejected=True))
    return seen


# The largest canonical document read back: a body is at most 1 MiB when it arrives, and escaping
# non-ASCII text as \uXXXX makes it at most six times that.
MAX_DOCUMENT = 8 * 1024 * 1024


def packed(document: bytes) -> tuple[bool, bytes]:
    """(compressed, bytes to store): zlib when it makes the document smaller."""
    squeezed = zlib.compress(document, 6)
    return (True, squeezed) if len(squeezed) < len(document) else (False, document)


def unpacked(compressed: bool, body: bytes) -> bytes:
    """The canonical JSON of a stored body; ValueError if it is corrupt or inflates past ``MAX_DOCUMENT``."""
    if not compressed:
        return bytes(body)
    inflater = zlib.decompressobj()
    try:
        document = inflater.decompress(body, MAX_DOCUMENT)
    except zlib.error as error:
        msg = f"the stored body is corrupt ({error})"
        raise ValueError(msg) from None
    if inflater.unconsumed_tail:
        msg = f"the stored body inflates past {MAX_DOCUMENT:,} bytes"
        raise ValueError(msg)
    if not inflater.eof or inflater.unused_data:
        msg = "the stored body is corrupt (" + ("bytes after its end)" if inflater.eof else "truncated)")
        raise ValueError(msg)
    return document


def verified(compressed: bool, body: bytes, digest: str) -> bytes:
    """The canonical JSON of a stored body whose SHA-256 is its stored ``digest``; ValueError if it is corrupt
    (``unpacked``) or is not the document the digest was taken of.

    The digest is unkeyed: it catches corruption and a document replaced without its digest, not someone
    who also writes the new document's digest.
    """
    document = unpacked(compressed, body)
    if hashlib.sha256(document).hexdigest() != digest:
        msg = "its SHA-256 is not the stored digest (the body was changed after it was archived)"
        raise ValueError(msg)
    return document


class Archiving(enum.Enum):
    """What a batch does with the archive."""

    KEEP = "keep"    # archive its observations (config archive.enabled: true)
    OFF = "off"      # archive nothing, and end the current spans of the connections it observes (false)
    LEAVE = "leave"  # leave the archive as it is: rebuild replays the archive itself


@dataclass(frozen=True)
class Current:
    """A connection's current span (``connections.archive_span_id``), as the batch's first SELECT read it."""

    span_id: int
    seen_at: dt.datetime  # its last_seen_at column: exact once the span has ended, or for a refused document
    digest: str | None    # its document's; None: a 404


def with_current(query: Select[Any]) -> Select[Any]:
    """``query`` (over ``connections``) with each connection's current span: ``current()`` reads it."""
    s, b = archive_spans.c, archive_bodies.c
    return (query.add_columns(s.id.label("span_id"), s.last_seen_at.label("span_seen_at"),
                              b.digest.label("span_digest"))
            .outerjoin(archive_spans, s.id == connections.c.archive_span_id)
            .outerjoin(archive_bodies, b.id == s.body_id))


def current(row: Any) -> Current | None:
    """The current span in a row of ``with_current``'s query, if the connection has one."""
    return None if row.span_id is None else Current(row.span_id, row.span_seen_at, row.span_digest)


def last_seen() -> ColumnElement[dt.datetime]:
    """A span's last sighting (over ``archive_spans`` joined to its connection).

    The current span of a connection whose documents are accepted is seen again on every unchanged pass;
    rather than write that each time, its last sighting is the connection's ``last_success_at`` (every
    success lands in the current span while the archive is on, and turning it off ends the span). The
    column is written when the span ends (``archive_batch``, ``end_spans``) and by ``settle``.
    """
    s, c = archive_spans.c, connections.c
    return case((and_(c.archive_span_id == s.id, c.last_success_at > s.last_seen_at), c.last_success_at),
                else_=s.last_seen_at)


def settle(conn: Connection) -> None:
    """Write every current span's last sighting (``last_seen``) into its column, for readers of the column."""
    s, c = archive_spans.c, connections.c
    success = select(c.last_success_at).where(c.archive_span_id == s.id).scalar_subquery()
    conn.execute(update(archive_spans).where(exists().where(
        c.archive_span_id == s.id, c.last_success_at > s.last_seen_at)).values(last_seen_at=success))


def archive_outcomes(
    conn: Connection, archiving: Archiving, run_id: int | None, outcomes: Sequence[Outcome], before: Before
) -> None:
    """What a batch does with the archive (``archiving``), after its other writes, in its transaction."""
    if archiving is Archiving.KEEP:
        archive_batch(conn, run_id, outcomes, before)
    elif archiving is Archiving.OFF:  # successes the archive does not hold: no span may stand for them
        end_spans(conn, [o.connection_id for o in outcomes if not isinstance(o, Failed)], before)


def archive_batch(conn: Connection, run_id: int | None, outcomes: Sequence[Outcome], before: Before) -> None:
    """Archive a batch's observations (at most one per connection), in the caller's transaction.

    ``before``: each connection's current span and ``last_success_at`` before this batch. An accepted
    document seen again, or a 404 again, writes nothing here (``last_seen``); a refused one seen again
    moves its span's ``last_seen_at``. Only a new document costs more: its body (once per connection), a
    new span, the pointer, and the end of the span it follows. A success with no document to keep (a
    record not made from one) ends the current span, as ``Archiving.OFF`` does.
    """
    extend: list[dict[str, Any]] = []
    new: list[Seen] = []
    for o in observations(outcomes):
        span = before.spans.get(o.connection_id)
        if span is None or span.digest != o.digest:
            new.append(o)
        elif o.rejected and o.observed_at > span.seen_at:
            extend.append({"b_id": span.span_id, "b_at": o.observed_at})
    _extend(conn, extend)
    end_spans(conn, [o.connection_id for o in new], before, detach=False)
    end_spans(conn, [o.connection_id for o in outcomes if isinstance(o, Fetched) and not o.record.document], before)
    if new:
        _start(conn, run_id, new, before)


@dataclass
class Before:
    """What the batch's first SELECT read for the archive: current spans, and the successes they end at."""

    spans: dict[str, Current] = field(default_factory=dict)
    last_success: dict[str, dt.datetime | None] = field(default_factory=dict)


def end_spans(conn: Connection, connection_ids: Sequence[str], before: Before, *, detach: bool = True) -> None:
    """End the current spans of these connections: each span's ``last_seen_at`` becomes its last sighting
    before this batch; ``detach``: the connection has no current span any more (else ``_start`` gives it
    a new one)."""
    ending = [i for i in connection_ids if i in before.spans]
    if not ending:
        return
    moved = []
    for i in ending:
        span, success = before.spans[i], before.last_success.get(i)
        if success is not None and success > span.seen_at:  # seen again after its column was last written
            moved.append({"b_id": span.span_id, "b_at": success})
    _extend(conn, moved)
    if detach:
        ending_ones = dialect_for(conn).among(connections.c.id, ending)
        conn.execute(update(connections).where(ending_ones).values(archive_span_id=None))


def _start(conn: Connection, run_id: int | None, seen: Sequence[Seen], before: Before) -> None:
    """New spans for new documents (and 404s after a document), and the connections' pointers to them."""
    body_ids = _body_ids(conn, seen, before)
    dialect_for(conn).insert_rows(conn, archive_spans, [
        {"connection_id": o.connection_id, "body_id": body_ids[(o.connection_id, o.digest)] if o.digest else None,
         "first_seen_at": o.observed_at, "last_seen_at": o.observed_at, "run_id": run_id} for o in seen])
    s, c = archive_spans.c, connections.c
    conn.execute(update(connections).where(dialect_for(conn).among(c.id, [o.connection_id for o in seen])).values(
        archive_span_id=select(func.max(s.id)).where(s.connection_id == c.id).scalar_subquery()))


def _extend(conn: Connection, extend: Sequence[dict[str, Any]]) -> None:
    """Move spans' ``last_seen_at``: one UPDATE per time when a page of the listing shares one, else one
    executemany (as ``batch._refresh_times`` does for the connections)."""
    by_time: dict[dt.datetime, list[int]] = {}
    for row in extend:
        by_time.setdefault(row["b_at"], []).append(row["b_id"])
    if len(by_time) * 4 <= len(extend):
        among = dialect_for(conn).among
        for at, ids in by_time.items():
            conn.execute(update(archive_spans).where(among(archive_spans.c.id, ids)).values(last_seen_at=at))
        return
    if extend:
        conn.execute(update(archive_spans).where(archive_spans.c.id == bindparam("b_id"))
                     .values(last_seen_at=bindparam("b_at")), list(extend))


def _body_ids(conn: Connection, seen: Sequence[Seen], before: Before) -> dict[tuple[str, str | None], int]:
    """The ids of the batch's documents in ``archive_bodies``, inserting those not stored yet.

    Only a connection archived before can have bodies: one with a current span, or with a success before
    this batch (a pass with the archive off ended its span). A first pass looks none up.
    """
    wanted = {(s.connection_id, s.digest): s for s in seen if s.document is not None}
    b = archive_bodies.c

    def stored(connection_ids: set[str]) -> dict[tuple[str, str | None], int]:
        if not connection_ids:
            return {}
        rows = conn.execute(select(b.id, b.connection_id, b.digest).where(  # a few bodies per connection
            dialect_for(conn).among(b.connection_id, sorted(connection_ids))))
        return {(r.connection_id, r.digest): r.id for r in rows if (r.connection_id, r.digest) in wanted}

    have = stored({c for c, _ in wanted if c in before.spans or before.last_success.get(c) is not None})
    new = []
    for key, s in wanted.items():
        if key not in have:
            assert s.document is not None and s.digest is not None
            compressed, body = packed(s.document)
            new.append({"connection_id": s.connection_id, "digest": s.digest, "compressed": compressed,
                        "body": body, "size": len(s.document), "rejected": s.rejected})
    dialect_for(conn).insert_rows(conn, archive_bodies, new)
    return have | stored({s.connection_id for key, s in wanted.items() if key not in have})


@dataclass(frozen=True)
class Archived:
    """What the archive holds for a connection at an instant: the latest observation received by then."""

    connection_id: str
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime
    run_id: int | None
    document: Any  # the document as JSON; None: the API answered 404
    rejected: bool

    def as_json(self) -> dict[str, object]:
        """The observation as the JSON that ``archive show`` prints."""
        return {"connection_id": self.connection_id, "status": 404 if self.document is None else 200,
                "first_seen_at": self.first_seen_at.isoformat(), "last_seen_at": self.last_seen_at.isoformat(),
                "run_id": self.run_id, "rejected": self.rejected, "document": self.document}


def archived_at(conn: Connection, connection_id: str, at: dt.datetime | None) -> Archived | None:
    """The observation of ``connection_id`` in force at ``at`` (the latest by default), or None;
    ValueError if its stored document cannot be read, is not the one archived (``verified``) or is another
    connection's."""
    s, b, c = archive_spans.c, archive_bodies.c, connections.c
    query = (select(s.first_seen_at, last_seen().label("last_seen_at"), s.run_id, b.compressed, b.body, b.digest,
                    b.rejected, b.connection_id.label("body_of"))
             .select_from(archive_spans.join(connections, c.id == s.connection_id)
                          .outerjoin(archive_bodies, s.body_id == b.id))
             .where(s.connection_id == connection_id).order_by(s.first_seen_at.desc(), s.id.desc()).limit(1))
    if at is not None:
        query = query.where(s.first_seen_at <= at)
    row = conn.execute(query).first()
    if row is None:
        return None
    if row.body is not None and row.body_of != connection_id:
        msg = f"its span points at a document of connection {row.body_of}"
        raise ValueError(msg)
    document = None if row.body is None else decode_json(verified(row.compressed, row.body, row.digest))
    return Archived(connection_id, row.first_seen_at, row.last_seen_at, row.run_id, document, bool(row.rejected))
