"""The document archive: what the API sent, kept so that the history can be shown and derived again.

Every successful fetch (per id or from the listing), every confirmed 404 and every document that
validation rejected (it was JSON, within the size cap) is an observation. Each distinct document of a
connection is kept once (``archive_bodies``, by the sha256 of its canonical JSON, zlib-compressed when
that is smaller); each run of identical observations is one ``archive_spans`` row (body, or none for a
404; first and last seen; the run that saw it first). An unchanged observation only moves its span's
``last_seen_at``. A network failure or a 5xx is no observation and archives nothing.

Written in the batch's transaction, set-based like the rest of the batch (``store_batch``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from etl.api.documents import decode_json
from etl.db.dialects import among, insert_rows
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
    return document


def readable(compressed: bool, body: bytes) -> Any:
    """A stored document as JSON, read as the API's answers are (``decode_json``: bounded numbers and
    depth); ValueError naming what is wrong with it."""
    return decode_json(unpacked(compressed, body))


def archive_batch(conn: Connection, run_id: int | None, outcomes: Sequence[Outcome]) -> None:
    """Archive a batch's observations (at most one per connection), in the caller's transaction.

    One SELECT finds each connection's current span (``connections.archive_span_id``) and its document's
    digest; an observation of the same document (or a 404 again) only moves that span's ``last_seen_at``.
    Only a new document costs more: its body (once per connection), a new span, the pointer.
    """
    seen = observations(outcomes)
    if not seen:
        return
    c, s, b = connections.c, archive_spans.c, archive_bodies.c
    current = {row.connection_id: row for row in conn.execute(
        select(c.id.label("connection_id"), s.id, s.last_seen_at, b.digest)
        .select_from(connections.join(archive_spans, s.id == c.archive_span_id)
                     .outerjoin(archive_bodies, b.id == s.body_id))
        .where(among(conn, c.id, [o.connection_id for o in seen])))}
    extend: list[dict[str, Any]] = []
    new: list[Seen] = []
    for o in seen:
        span = current.get(o.connection_id)
        if span is not None and span.digest == o.digest:
            if o.observed_at > span.last_seen_at:
                extend.append({"b_id": span.id, "b_at": o.observed_at})
        else:
            new.append(o)
    _extend(conn, extend)
    if new:
        _start(conn, run_id, new)


def _start(conn: Connection, run_id: int | None, seen: Sequence[Seen]) -> None:
    """New spans for new documents (and 404s after a document), and the connections' pointers to them."""
    body_ids = _body_ids(conn, seen)
    insert_rows(conn, archive_spans, [
        {"connection_id": o.connection_id, "body_id": body_ids[(o.connection_id, o.digest)] if o.digest else None,
         "first_seen_at": o.observed_at, "last_seen_at": o.observed_at, "run_id": run_id} for o in seen])
    s, c = archive_spans.c, connections.c
    conn.execute(update(connections).where(among(conn, c.id, [o.connection_id for o in seen])).values(
        archive_span_id=select(func.max(s.id)).where(s.connection_id == c.id).scalar_subquery()))


def _extend(conn: Connection, extend: Sequence[dict[str, Any]]) -> None:
    """Move spans' ``last_seen_at``: one UPDATE per time when a page of the listing shares one, else one
    executemany (as ``batch._refresh_times`` does for the connections)."""
    by_time: dict[dt.datetime, list[int]] = {}
    for row in extend:
        by_time.setdefault(row["b_at"], []).append(row["b_id"])
    if len(by_time) * 4 <= len(extend):
        for at, ids in by_time.items():
            conn.execute(update(archive_spans).where(among(conn, archive_spans.c.id, ids)).values(last_seen_at=at))
        return
    if extend:
        conn.execute(update(archive_spans).where(archive_spans.c.id == bindparam("b_id"))
                     .values(last_seen_at=bindparam("b_at")), list(extend))


def _body_ids(conn: Connection, seen: Sequence[Seen]) -> dict[tuple[str, str | None], int]:
    """The ids of the batch's documents in ``archive_bodies``, inserting those not stored yet."""
    wanted = {(s.connection_id, s.digest): s for s in seen if s.document is not None}
    if not wanted:
        return {}

    def stored() -> dict[tuple[str, str | None], int]:
        b = archive_bodies.c
        rows = conn.execute(select(b.id, b.connection_id, b.digest).where(  # a few bodies per connection
            among(conn, b.connection_id, sorted({c for c, _ in wanted}))))
        return {(r.connection_id, r.digest): r.id for r in rows if (r.connection_id, r.digest) in wanted}

    have = stored()
    new = []
    for key, s in wanted.items():
        if key not in have:
            assert s.document is not None and s.digest is not None
            compressed, body = packed(s.document)
            new.append({"connection_id": s.connection_id, "digest": s.digest, "compressed": compressed,
                        "body": body, "size": len(s.document), "rejected": s.rejected})
    if not new:
        return have
    insert_rows(conn, archive_bodies, new)
    return stored()


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
    ValueError if its stored document cannot be read (``readable``)."""
    s, b = archive_spans.c, archive_bodies.c
    query = (select(s.first_seen_at, s.last_seen_at, s.run_id, b.compressed, b.body, b.rejected)
             .select_from(archive_spans.outerjoin(archive_bodies, s.body_id == b.id))
             .where(s.connection_id == connection_id).order_by(s.first_seen_at.desc(), s.id.desc()).limit(1))
    if at is not None:
        query = query.where(s.first_seen_at <= at)
    row = conn.execute(query).first()
    if row is None:
        return None
    document = None if row.body is None else readable(row.compressed, row.body)
    return Archived(connection_id, row.first_seen_at, row.last_seen_at, row.run_id, document, bool(row.rejected))
