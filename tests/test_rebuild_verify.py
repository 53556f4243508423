"""`rebuild` verifies every archived body it will replay before it changes anything (on every database).

A body that does not decompress or parse, whose SHA-256 is not its stored digest, or that belongs to
another connection than the span replaying it, is refused: exit 2 naming the span, the body and the
connection, and not one row of any table changes (``--dry-run`` the same).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from contextlib import closing
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from etl.cli import cli
from etl.db.archive import packed, unpacked, verified
from etl.db.models import Base, archive_bodies, archive_spans, connections, permission_changes
from etl.db.rebuild import snapshot, verify
from etl.db.store import Store
from etl.errors import ConfigError, UnverifiableArchive
from etl.tracking import track
from tests.conftest import Runner


def tables(engine: Engine) -> dict[str, list[str]]:
    """Every row of every table, in primary-key order, as text: what must not change at all."""
    with engine.connect() as conn:
        return {table.name: [repr(tuple(row)) for row in conn.execute(
            select(table).order_by(*(table.primary_key.columns or table.columns)))]
            for table in Base.metadata.sorted_tables}


def derived(engine: Engine) -> dict[str, Any]:
    """What rebuild derives (``snapshot``: the changes without their surrogate ids)."""
    with engine.connect() as conn:
        return snapshot(conn)


def history(run_sync: Runner, count: int, *, seed: int) -> list[str]:
    """``count`` connections with a history: a first pass, then one whose first connection lost a permission."""
    ids = run_sync.fake.populate(count, seed=seed)
    track(Store(run_sync.engine), ids)
    run_sync(ignore_due=True)
    run_sync.fake.set_permissions(ids[0], ["read_vin"])
    run_sync(ignore_due=True, advance=dt.timedelta(hours=1))
    return ids


def span_and_body(engine: Engine, connection_id: str, *, last: bool = False) -> tuple[int, int]:
    """The (span id, body id) of the connection's first (or last) span."""
    s = archive_spans.c
    with engine.connect() as conn:
        row = conn.execute(select(s.id, s.body_id).where(s.connection_id == connection_id)
                           .order_by(s.id.desc() if last else s.id).limit(1)).one()
    return row.id, row.body_id


def refused(engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, *named: str) -> list[str]:
    """Run `rebuild --dry-run`, `rebuild` and ``Store.rebuild``: each refused naming ``named``, nothing changed.
    The CLI's stderr."""
    before = tables(engine)
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    messages = []
    for args in (["rebuild", "--dry-run"], ["rebuild"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "rebuilt" not in result.stdout
        assert all(n in result.stderr for n in named), (named, result.stderr)
        assert "nothing was changed" in result.stderr
        assert tables(engine) == before
        messages.append(result.stderr)
    for dry_run in (True, False):
        with pytest.raises(UnverifiableArchive) as raised:
            Store(engine).rebuild(dry_run=dry_run)
        assert isinstance(raised.value, ConfigError) and raised.value.exit_code == 2
        assert all(n in str(raised.value) for n in named)
        assert tables(engine) == before
    return messages


def test_a_corrupt_compressed_body_is_refused_and_nothing_changes(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = history(run_sync, 3, seed=21)
    span, body = span_and_body(engine, ids[0])
    with engine.begin() as conn:
        conn.execute(update(archive_bodies).where(archive_bodies.c.id == body)
                     .values(compressed=True, body=b"\x78\x9cnot zlib at all"))
    [message, _] = refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {body}", ids[0], "corrupt")
    assert ids[1] not in message and ids[2] not in message  # their bodies are sound


def test_an_uncompressed_body_that_is_not_json_is_refused(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = history(run_sync, 2, seed=22)
    span, body = span_and_body(engine, ids[1])
    document = b"{not json"
    with engine.begin() as conn:  # its digest matches: only parsing it finds the fault
        conn.execute(update(archive_bodies).where(archive_bodies.c.id == body).values(
            compressed=False, body=document, digest=hashlib.sha256(document).hexdigest()))
    refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {body}", ids[1], "not JSON")


def test_another_valid_document_under_the_old_digest_is_refused(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A forged document (more permissions than were ever granted) that would validate and be replayed."""
    ids = history(run_sync, 2, seed=23)
    span, body = span_and_body(engine, ids[0], last=True)
    with engine.connect() as conn:
        row = conn.execute(select(archive_bodies).where(archive_bodies.c.id == body)).one()
    document = json.loads(unpacked(row.compressed, row.body))
    assert document["id"] == ids[0]
    document["attributes"]["permissions"] = [*document["attributes"]["permissions"], "control_security"]
    compressed, stored = packed(json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
    with engine.begin() as conn:
        conn.execute(update(archive_bodies).where(archive_bodies.c.id == body)
                     .values(compressed=compressed, body=stored))  # the digest stays the old one
    refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {body}", ids[0], "digest")


def test_a_span_pointed_at_another_connections_body_is_refused(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = history(run_sync, 2, seed=24)
    span, _ = span_and_body(engine, ids[0])
    _, other = span_and_body(engine, ids[1])
    with engine.begin() as conn:
        conn.execute(update(archive_spans).where(archive_spans.c.id == span).values(body_id=other))
    refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {other}", ids[0], ids[1])


def test_a_rejected_body_that_belongs_to_another_connection_is_refused(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rejected document may name another id, or none: its row's connection is what must match the span's."""
    ids = history(run_sync, 2, seed=25)
    run_sync.fake.connections[ids[0]].broken = "bad_permission"
    rejected = run_sync(ignore_due=True, advance=dt.timedelta(hours=1))
    assert rejected.counts.failed == 1
    span, body = span_and_body(engine, ids[0], last=True)
    with engine.begin() as conn:
        assert conn.scalar(select(archive_bodies.c.rejected).where(archive_bodies.c.id == body))
        conn.execute(update(archive_bodies).where(archive_bodies.c.id == body).values(connection_id=ids[1]))
    refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {body}", ids[0], ids[1])


def test_rejected_bodies_of_their_own_connection_still_rebuild(run_sync: Runner, engine: Engine) -> None:
    """A rejected document naming another id, or with no data member, is the span's own: replayed (and
    refused by validation again), not refused by the verification."""
    ids = history(run_sync, 3, seed=26)
    run_sync.fake.connections[ids[0]].broken = "wrong_id"
    run_sync.fake.connections[ids[1]].broken = "no_user"
    run_sync(ignore_due=True, advance=dt.timedelta(hours=1))
    with engine.connect() as conn:
        assert conn.scalar(select(archive_bodies.c.rejected).where(archive_bodies.c.connection_id == ids[0])
                           .order_by(archive_bodies.c.id.desc()).limit(1))
    before = derived(engine)
    result = Store(engine).rebuild()
    assert not result.differs and result.still_rejected == 2
    assert derived(engine) == before


def test_at_most_ten_unverifiable_rows_are_named_then_how_many_more(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = history(run_sync, 13, seed=27)
    with engine.begin() as conn:
        conn.execute(update(archive_bodies).values(compressed=True, body=b"\x78\x9cbroken"))
        spans = conn.scalar(select(archive_spans.c.id).order_by(archive_spans.c.id.desc()).limit(1))
        count = len(list(conn.scalars(select(archive_spans.c.id))))
    assert count == 14 and spans is not None  # 13 first spans and the changed connection's second
    [message, _] = refused(engine, tmp_path, monkeypatch, "14 archived", "and 4 more")
    assert sum(message.count(i) for i in ids) == 10
    with engine.connect() as conn, pytest.raises(UnverifiableArchive) as raised:
        verify(conn)
    assert len(raised.value.bad) == 10 and raised.value.total == 14  # only the shown ones are kept


def test_a_sound_archive_is_verified_and_rebuilt_exactly(run_sync: Runner, engine: Engine) -> None:
    ids = history(run_sync, 4, seed=28)
    run_sync.fake.remove(ids[1])  # a span without a body
    run_sync(ignore_due=True, advance=dt.timedelta(hours=1))
    before = tables(engine)
    built = changes(engine)
    with engine.begin() as conn:
        conn.execute(update(connections).values(status="pending"))
        conn.execute(permission_changes.delete())
    result = Store(engine).rebuild()
    assert result.differs
    with engine.connect() as conn:  # each span's first sighting, and its last when later
        replayed = sum(1 + (span.last_seen_at > span.first_seen_at) for span in conn.execute(select(archive_spans)))
    assert result.observations == replayed and replayed > 6
    after = tables(engine)
    for name in ("users", "vehicles", "connections", "permission_grants", "archive_bodies"):  # the changes
        assert after[name] == before[name], name  # have new surrogate ids; the spans' last sightings are settled
    assert changes(engine) == built and len(built) > 4
    assert Store(engine).rebuild().differs is False


def changes(engine: Engine) -> list[tuple[Any, ...]]:
    """Every permission change without its surrogate id."""
    c = permission_changes.c
    with engine.connect() as conn:
        return sorted(tuple(r) for r in conn.execute(select(*(col for col in permission_changes.columns
                                                              if col is not c.id))))


def test_unpacked_refuses_a_truncated_or_overlong_stream_and_verified_the_wrong_document() -> None:
    document = json.dumps({"id": "x", "padding": "a" * 200}).encode()
    compressed, stored = packed(document)
    assert compressed and unpacked(True, stored) == document
    with pytest.raises(ValueError, match=r"corrupt \(truncated\)"):
        unpacked(True, stored[:-6])
    with pytest.raises(ValueError, match=r"corrupt \(bytes after its end\)"):
        unpacked(True, stored + b"\x00")
    digest = hashlib.sha256(document).hexdigest()
    assert verified(True, stored, digest) == document and verified(False, document, digest) == document
    with pytest.raises(ValueError) as altered:
        verified(True, stored, hashlib.sha256(document + b" ").hexdigest())
    assert str(altered.value) == "its SHA-256 is not the stored digest (the body was changed after it was archived)"
    with pytest.raises(ValueError, match="corrupt"):  # the stream is read before the digest is compared
        verified(True, stored[:-6], digest)


def rewrite(engine: Engine, body_id: int, change: Any) -> None:
    """Replace a body with ``change(document)``, its digest recomputed: a sound body of another document."""
    with engine.begin() as conn:
        row = conn.execute(select(archive_bodies).where(archive_bodies.c.id == body_id)).one()
        document = change(json.loads(unpacked(row.compressed, row.body)))
        text = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        compressed, stored = packed(text)
        conn.execute(update(archive_bodies).where(archive_bodies.c.id == body_id).values(
            compressed=compressed, body=stored, digest=hashlib.sha256(text).hexdigest()))


def test_an_accepted_document_is_its_connections_by_the_canonical_form_of_its_id(
        run_sync: Runner, engine: Engine) -> None:
    ids = history(run_sync, 2, seed=29)
    _, body = span_and_body(engine, ids[1])
    rewrite(engine, body, lambda document: {**document, "id": document["id"].upper()})
    before = derived(engine)
    assert not Store(engine).rebuild().differs  # the same id, in upper case: the same connection's
    assert derived(engine) == before


@pytest.mark.parametrize("document", ["another", "none", "list"])
def test_an_accepted_document_naming_another_connection_or_none_is_refused(
        run_sync: Runner, engine: Engine, document: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sound body (its digest written too) whose document is another connection's: the digest cannot tell."""
    ids = history(run_sync, 2, seed=30)
    span, body = span_and_body(engine, ids[0])
    if document == "another":
        rewrite(engine, body, lambda d: {**d, "id": ids[1]})
        expected = f"the document is connection {ids[1]}'s"
    else:
        rewrite(engine, body, (lambda d: {k: v for k, v in d.items() if k != "id"}) if document == "none"
                else (lambda d: [d]))
        expected = "the document is of no connection's"
    refused(engine, tmp_path, monkeypatch, f"span {span}", f"body {body}", ids[0], expected)


def test_every_page_of_spans_is_verified(run_sync: Runner, engine: Engine, tmp_path: Any,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans are read a page (``BATCH``) at a time: faults on the first and the last page are found, once each.
    (``verify`` itself: the replay would find a fault it missed, but only after the history was deleted.)"""
    from etl.db import rebuild

    ids = history(run_sync, 6, seed=31)  # 7 spans: pages of 3, 3 and 1
    with engine.connect() as conn:
        spans = conn.execute(select(archive_spans.c.id, archive_spans.c.body_id).order_by(archive_spans.c.id)).all()
    assert [span.id for span in spans] == [1, 2, 3, 4, 5, 6, 7]
    with engine.begin() as conn:
        conn.execute(update(archive_bodies).where(archive_bodies.c.id.in_([spans[0].body_id, spans[6].body_id]))
                     .values(compressed=False, body=b"{}"))
    monkeypatch.setattr(rebuild, "BATCH", 3)
    with engine.connect() as conn, pytest.raises(UnverifiableArchive) as raised:
        verify(conn)
    assert [u.span_id for u in raised.value.bad] == [1, 7] and raised.value.total == 2
    [message, _] = refused(engine, tmp_path, monkeypatch, f"span {spans[6].id}", f"body {spans[6].body_id}",
                           ids[0], "2 archived")
    assert "span 6 " not in message


def test_a_body_that_changes_between_the_verification_and_the_replay_is_refused(
        run_sync: Runner, engine: Engine) -> None:
    """The replay checks each body again as it reads it (``_outcomes``); the transaction then rolls back."""
    from etl.db.rebuild import RebuildResult, _bodies, _Event, _outcomes

    ids = history(run_sync, 1, seed=32)
    span, body = span_and_body(engine, ids[0])
    with engine.connect() as conn:
        sound = _bodies(conn, {body, None})
    event = _Event(span, ids[0], dt.datetime.now(dt.UTC), None, body, True)
    assert [o.connection_id for o in _outcomes([event], sound, RebuildResult())] == ids[0:1]
    with pytest.raises(UnverifiableArchive, match=f"span {span} of connection {ids[0]} \\(body {body}\\): its body "
                                                  "is missing"):
        _outcomes([event], {}, RebuildResult())
    with engine.connect() as conn:
        assert _bodies(conn, {None}) == {}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the other databases' foreign keys keep the body
def test_a_span_whose_body_row_is_missing_is_refused(run_sync: Runner, engine: Engine, tmp_path: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Only SQLite lets a span point at no body (a connection without foreign keys on)."""
    ids = history(run_sync, 2, seed=33)
    span, _ = span_and_body(engine, ids[0])
    import sqlite3

    with closing(sqlite3.connect(str(engine.url.database))) as raw, raw:  # foreign keys are off by default
        raw.execute("UPDATE archive_spans SET body_id = 999999 WHERE id = ?", (span,))
    refused(engine, tmp_path, monkeypatch, f"span {span}", "body 999999", ids[0], "its body is missing")
