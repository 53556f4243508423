"""The document archive: what is kept, once, and what is not (on every database)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import Engine, column, func, select, table

from etl.api.documents import canonical_document
from etl.db.archive import unpacked
from etl.db.models import Base, UtcDateTime, archive_bodies, archive_spans, connections, sync_runs
from etl.db.store import Store
from etl.errors import ConfigError
from etl.tracking import track
from tests.conftest import Runner


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.scalar(select(func.count()).select_from(table)) or 0
                for name, table in Base.metadata.tables.items()}


def spans(engine: Engine, cid: str) -> list[Any]:
    s, b = archive_spans.c, archive_bodies.c
    with engine.connect() as conn:
        return list(conn.execute(
            select(s.body_id, s.first_seen_at, s.last_seen_at, s.run_id, b.compressed, b.body, b.rejected)
            .select_from(archive_spans.outerjoin(archive_bodies, s.body_id == b.id))
            .where(s.connection_id == cid).order_by(s.id)))


def document(row: Any) -> Any:
    return None if row.body_id is None else json.loads(unpacked(row.compressed, row.body))


def tracked(run_sync: Runner, count: int, *, seed: int) -> list[str]:
    """``count`` connections on the fake API, tracked."""
    ids = run_sync.fake.populate(count, seed=seed)
    track(Store(run_sync.engine), ids)
    return ids


def archive_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for table in (archive_bodies, archive_spans)
                for r in conn.execute(select(table).order_by(table.c.id))]


def test_an_unchanged_pass_adds_no_row_outside_sync_runs_and_writes_nothing_to_the_archive(
        run_sync: Runner, engine: Engine) -> None:
    ids = tracked(run_sync, 5, seed=2)
    store = Store(engine)
    run_sync(ignore_due=True)
    before, archived = row_counts(engine), archive_rows(engine)
    assert before["archive_bodies"] == before["archive_spans"] == 5
    [(_, first, last, run_id, *_)] = spans(engine, ids[0])
    assert first == last == store.archived(ids[0]).last_seen_at  # type: ignore[union-attr]
    again = run_sync(ignore_due=True)
    after = row_counts(engine)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"sync_runs": 1}
    assert archive_rows(engine) == archived  # not a column written: the span's last sighting is the connection's
    shown = store.archived(ids[0])
    assert shown is not None and (shown.first_seen_at, shown.run_id) == (first, run_id)
    with engine.connect() as conn:
        success = conn.scalar(select(connections.c.last_success_at).where(connections.c.id == ids[0]))
    assert shown.last_seen_at > last and shown.last_seen_at == success
    with engine.connect() as conn:  # the span names the run that first saw it
        assert run_id == conn.scalar(select(func.min(sync_runs.c.id)))
    assert again.counts.fetched == 5
    assert versions(engine, ids[0]) == [(first, shown.last_seen_at, 1)]  # SQL sees the same


def versions(engine: Engine, cid: str) -> list[tuple[Any, ...]]:
    """The connection's rows of the ``archive_versions`` view: first and last seen, and whether current."""
    view = table("archive_versions", column("connection_id"), column("span_id"), column("first_seen_at", UtcDateTime()),
                 column("last_seen_at", UtcDateTime()), column("is_current"))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(view.c.first_seen_at, view.c.last_seen_at, view.c.is_current)
            .where(view.c.connection_id == cid).order_by(view.c.span_id))]


def test_a_network_failure_or_a_5xx_archives_nothing(run_sync: Runner, engine: Engine) -> None:
    tracked(run_sync, 2, seed=3)
    run_sync.fake.fail_next(500, times=100)
    run_sync(ignore_due=True)
    run_sync.fake.fail_next(None, error="connect", times=100)
    result = run_sync(ignore_due=True)
    assert result.counts.failed == 2
    counts = row_counts(engine)
    assert counts["archive_bodies"] == counts["archive_spans"] == 0 and counts["fetch_errors"] == 4


def test_a_rejected_document_is_archived_flagged_and_a_404_is_a_span_without_a_body(
        run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    ids = tracked(run_sync, 2, seed=4)
    fake.connections[ids[0]].broken = "bad_permission"
    fake.remove(ids[1])
    result = run_sync(ignore_due=True)
    assert (result.counts.failed, result.counts.deleted) == (1, 1)
    [rejected] = spans(engine, ids[0])
    assert rejected.rejected is True or rejected.rejected == 1
    assert "read_vin\nread_location" in document(rejected)["attributes"]["permissions"]
    [gone] = spans(engine, ids[1])
    assert gone.body_id is None and document(gone) is None


def test_a_to_b_to_a_is_three_spans_over_two_bodies(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    [cid] = tracked(run_sync, 1, seed=5)
    conn = fake.connections[cid]
    a = list(conn.permissions)
    for permissions, updated in ((a, conn.updated_at), (["read_vin"], "2026-02-01T00:00:00Z"),
                                 (["read_vin"], "2026-02-01T00:00:00Z"), (a, conn.updated_at)):
        conn.permissions, conn.updated_at = list(permissions), updated  # A, B, B, then exactly A again
        run_sync(ignore_due=True)
    rows = spans(engine, cid)
    assert [sorted(document(r)["attributes"]["permissions"]) for r in rows] == [sorted(a), ["read_vin"], sorted(a)]
    assert rows[0].body_id == rows[2].body_id != rows[1].body_id
    assert rows[1].last_seen_at > rows[1].first_seen_at  # seen twice
    assert row_counts(engine)["archive_bodies"] == 2


def test_a_get_and_a_listing_item_of_the_same_state_are_one_version(run_sync: Runner, engine: Engine) -> None:
    ids = tracked(run_sync, 3, seed=6)
    run_sync(ignore_due=True)                 # one GET each
    run_sync(ignore_due=True, strategy="list")  # the listing: same states, other links
    counts = row_counts(engine)
    assert counts["archive_bodies"] == counts["archive_spans"] == 3
    [row] = spans(engine, ids[0])
    assert "links" not in json.dumps(document(row))


def test_with_the_archive_off_nothing_is_archived(run_sync: Runner, engine: Engine) -> None:
    tracked(run_sync, 2, seed=7)
    result = run_sync(ignore_due=True, archive=False)
    assert result.counts.fetched == 2
    counts = row_counts(engine)
    assert counts["archive_bodies"] == counts["archive_spans"] == 0 and counts["permission_changes"] > 0


def test_turning_the_archive_off_ends_the_current_spans_at_their_last_archived_sighting(
        run_sync: Runner, engine: Engine) -> None:
    ids = tracked(run_sync, 2, seed=9)
    store = Store(engine)
    run_sync(ignore_due=True)
    run_sync(ignore_due=True)  # unchanged: the span's last sighting is this pass, not yet in its column
    seen = store.archived(ids[0]).last_seen_at  # type: ignore[union-attr]
    assert seen > spans(engine, ids[0])[0].last_seen_at
    run_sync(ignore_due=True, archive=False)  # seen again, not archived: the span ends where the archive last saw it
    [ended] = spans(engine, ids[0])
    assert ended.last_seen_at == seen == store.archived(ids[0]).last_seen_at  # type: ignore[union-attr]
    with engine.connect() as conn:
        assert set(conn.scalars(select(connections.c.archive_span_id))) == {None}
    with pytest.raises(ConfigError, match=ids[0]):  # the last success is not in the archive
        store.rebuild(dry_run=True)
    archived = archive_rows(engine)
    run_sync(ignore_due=True, archive=False)
    assert archive_rows(engine) == archived
    run_sync(ignore_due=True)  # on again: a new span of the same body
    first, again = spans(engine, ids[0])
    assert first.body_id == again.body_id and again.first_seen_at > seen
    assert store.archived(ids[0]).first_seen_at == again.first_seen_at  # type: ignore[union-attr]
    assert versions(engine, ids[0]) == [(first.first_seen_at, seen, 0), (again.first_seen_at, again.last_seen_at, 1)]
    assert not store.rebuild(dry_run=True).differs


def test_a_refused_document_seen_again_moves_its_span(run_sync: Runner, engine: Engine) -> None:
    [cid] = tracked(run_sync, 1, seed=10)
    store = Store(engine)
    run_sync(ignore_due=True)
    run_sync.fake.connections[cid].broken = "bad_permission"  # served refused from now on: seen twice
    run_sync(ignore_due=True)
    run_sync(ignore_due=True)
    accepted, refused = spans(engine, cid)
    assert refused.rejected and refused.last_seen_at > refused.first_seen_at > accepted.last_seen_at
    assert store.archived(cid).last_seen_at == refused.last_seen_at  # type: ignore[union-attr]
    assert accepted.last_seen_at == accepted.first_seen_at  # ended where it was last seen


def test_no_token_or_secret_reaches_the_archive(run_sync: Runner, engine: Engine) -> None:
    tracked(run_sync, 4, seed=8)
    run_sync(ignore_due=True, strategy="list")
    run_sync(ignore_due=True)
    with engine.connect() as conn:
        stored = b"".join(unpacked(c, b) for c, b in conn.execute(
            select(archive_bodies.c.compressed, archive_bodies.c.body)))
    tokens = {t.encode() for t in run_sync.fake.issued_tokens}
    assert len(stored) > 1000 and tokens
    for secret in {run_sync.fake.client_secret.encode(), run_sync.fake.client_id.encode(), *tokens}:
        assert secret not in stored


@pytest.mark.parametrize("resource", [
    {"id": "x", "links": {"self": "/a"}, "relationships": {"user": {"links": {"related": "/u"}, "data": {}}}},
    {"b": 1, "a": [2, {"links": 3, "c": "é"}]},
])
def test_the_canonical_document_sorts_keys_and_drops_every_links_member(resource: Any) -> None:
    text = canonical_document(resource)
    assert b"links" not in text and b" " not in text and text.isascii()
    assert json.loads(text) == json.loads(canonical_document(json.loads(text)))  # a fixed point
    keys = list(json.loads(text))
    assert keys == sorted(keys)


def test_archive_show_as_of_returns_the_version_received_then(run_sync: Runner, engine: Engine, tmp_path: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from etl.cli import cli

    fake = run_sync.fake
    [cid] = tracked(run_sync, 1, seed=9)
    times = []
    for permissions in (["read_vin"], ["read_vin", "read_location"], ["read_odometer"]):
        fake.set_permissions(cid, permissions)
        run_sync(ignore_due=True)
        times.append(run_sync.clock.now)
        run_sync(ignore_due=True)  # seen again: the same version, a later last_seen_at
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}

    def show(*args: str) -> Any:
        return CliRunner().invoke(cli, ["archive", "show", cid, *args], env=env)

    for at, permissions in zip(times, (["read_vin"], ["read_location", "read_vin"], ["read_odometer"]), strict=True):
        for probe in (at, at + dt.timedelta(minutes=5)):  # within the version's span and after its last sighting
            result = show("--as-of", probe.isoformat())
            assert result.exit_code == 0, result.output
            shown = json.loads(result.stdout)
            assert sorted(shown["document"]["attributes"]["permissions"]) == permissions
            assert shown["status"] == 200 and shown["rejected"] is False and shown["connection_id"] == cid
            assert dt.datetime.fromisoformat(shown["first_seen_at"]) <= probe
            assert dt.datetime.fromisoformat(shown["last_seen_at"]) > dt.datetime.fromisoformat(shown["first_seen_at"])
    assert json.loads(show().stdout)["document"]["attributes"]["permissions"] == ["read_odometer"]
    before = show("--as-of", (times[0] - dt.timedelta(seconds=1)).isoformat())
    assert before.exit_code == 1 and "holds nothing" in before.stderr and before.stdout == ""
    bad = show("--as-of", "yesterday")
    assert bad.exit_code == 2
    wrong = CliRunner().invoke(cli, ["archive", "show", "not-a-uuid"], env=env)
    assert wrong.exit_code == 2 and "not-a-uuid" in wrong.stderr


def test_a_batch_stored_directly_archives_by_default(engine: Engine) -> None:
    from etl.api.documents import parse_connection
    from etl.db.batch import store_batch
    from etl.fakeapi import FakeApi
    from etl.outcomes import Fetched
    from tests.conftest import T0

    fake = FakeApi()
    [cid] = fake.populate(1, seed=10)
    track(Store(engine), [cid])
    record = parse_connection({"data": fake.document(fake.connections[cid])}, expected_id=cid, path="-")
    with engine.begin() as conn:
        store_batch(conn=conn, run_id=None, outcomes=[Fetched(cid, T0, record)])
    [row] = spans(engine, cid)
    assert document(row)["id"] == cid and row.first_seen_at == T0


def test_hostile_values_are_archived_shown_and_rebuilt(run_sync: Runner, engine: Engine, tmp_path: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Numbers no column holds, NaN, control characters and a lone surrogate: archived as read, shown
    as JSON, and rebuilt to what the live pass stored."""
    from click.testing import CliRunner

    from etl.cli import cli

    fake = run_sync.fake
    conn = fake.add(permissions=["read_vin"])
    body = json.dumps({"data": fake.document(conn)})
    body = body.replace('"year": ' + str(conn.vehicle["year"]), '"year": 1e400, "huge": ' + "9" * 60
                        + ', "nan": NaN').replace(f'"make": "{conn.vehicle["make"]}"',
                                                  '"make": "Ki\\u0000a\\ud800"')
    conn.raw = body.encode()
    track(Store(engine), [conn.id])
    result = run_sync(ignore_due=True)
    assert result.counts.fetched == 1 and result.counts.nulled >= 2  # make and year stored as NULL
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    shown = CliRunner().invoke(cli, ["archive", "show", conn.id], env=env)
    assert shown.exit_code == 0, shown.output
    vehicle = json.loads(shown.stdout)["document"]["attributes"]["vehicle"]
    assert vehicle["make"] == "Ki\x00a\ud800" and vehicle["year"] == "Infinity"  # 1e400 read as a double
    assert vehicle["huge"] == "9" * 60 and vehicle["nan"] == "NaN"  # kept whole, as the text read
    dry = CliRunner().invoke(cli, ["rebuild", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "the history is as rebuilt" in dry.stdout, dry.output


@pytest.mark.parametrize("stored", ["garbage", "bomb"])
def test_a_corrupt_or_inflating_stored_body_is_a_clear_error_and_rebuild_refuses_it(
        run_sync: Runner, engine: Engine, stored: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import zlib

    from click.testing import CliRunner
    from sqlalchemy import update

    from etl.cli import cli

    ids = tracked(run_sync, 2, seed=14)
    run_sync(ignore_due=True)
    bad = b"\x78\x9cnot zlib at all" if stored == "garbage" else zlib.compress(b" " * (64 * 1024 * 1024), 9)
    with engine.begin() as conn:
        conn.execute(update(archive_bodies).where(archive_bodies.c.connection_id == ids[0])
                     .values(compressed=True, body=bad))
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    shown = CliRunner().invoke(cli, ["archive", "show", ids[0]], env=env)
    assert shown.exit_code == 3 and "Traceback" not in shown.output
    assert f"the archived document of connection {ids[0]} cannot be read" in shown.stderr
    assert ("corrupt" if stored == "garbage" else "inflates past") in shown.stderr
    assert CliRunner().invoke(cli, ["archive", "show", ids[1]], env=env).exit_code == 0  # the other one is fine
    dry = CliRunner().invoke(cli, ["rebuild", "--dry-run"], env=env)  # skipping it would drop its history
    assert dry.exit_code == 2 and ids[0] in dry.stderr and "nothing was changed" in dry.stderr, dry.output
    assert ("corrupt" if stored == "garbage" else "inflates past") in dry.stderr


def test_archive_show_refuses_a_body_changed_after_it_was_archived(run_sync: Runner, engine: Engine, tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from sqlalchemy import update

    from etl.cli import cli

    ids = tracked(run_sync, 2, seed=15)
    run_sync(ignore_due=True)
    with engine.begin() as conn:  # valid JSON, one permission more, and the digest of what was received
        compressed, body = conn.execute(select(archive_bodies.c.compressed, archive_bodies.c.body)
                                        .where(archive_bodies.c.connection_id == ids[0])).one()
        document = json.loads(unpacked(compressed, body))
        document["attributes"]["permissions"].append("read_location")
        conn.execute(update(archive_bodies).where(archive_bodies.c.connection_id == ids[0])
                     .values(compressed=False, body=json.dumps(document).encode()))
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    shown = CliRunner().invoke(cli, ["archive", "show", ids[0]], env=env)
    assert shown.exit_code == 3 and shown.stdout == "" and "Traceback" not in shown.output
    assert (f"the archived document of connection {ids[0]} cannot be read: its SHA-256 is not the stored digest"
            in shown.stderr)
    assert CliRunner().invoke(cli, ["archive", "show", ids[1]], env=env).exit_code == 0


def test_archive_show_refuses_a_span_pointing_at_another_connections_document(
        run_sync: Runner, engine: Engine, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner
    from sqlalchemy import update

    from etl.cli import cli

    ids = tracked(run_sync, 2, seed=16)
    run_sync(ignore_due=True)
    with engine.begin() as conn:  # a genuine body, digest and all, of the other connection
        other = conn.scalar(select(archive_bodies.c.id).where(archive_bodies.c.connection_id == ids[1]))
        conn.execute(update(archive_spans).where(archive_spans.c.connection_id == ids[0]).values(body_id=other))
    monkeypatch.chdir(tmp_path)
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    shown = CliRunner().invoke(cli, ["archive", "show", ids[0]], env=env)
    assert shown.exit_code == 3 and shown.stdout == "" and "Traceback" not in shown.output
    assert (f"the archived document of connection {ids[0]} cannot be read: its span points at a document of "
            f"connection {ids[1]}") in shown.stderr
    assert CliRunner().invoke(cli, ["archive", "show", ids[1]], env=env).exit_code == 0
