"""Hostile input: poison documents, odd ids, bombs, trickles, and what the database refuses.

One bad document costs only its own connection (or only its bad descriptive
fields), every read is bounded, and nothing ends in a traceback.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import socket
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, text

from etl.api.answers import classify
from etl.api.client import ClientOptions, SmartcarClient
from etl.api.documents import OutOfRange, canonical_id, decode_json, parse_connection
from etl.api.retry import RetryPolicy, parse_retry_after
from etl.api.transport import ReadLimits, make_http_client, send
from etl.config import ApiConfig, Secret
from etl.context import Seams
from etl.db.models import connections, fetch_errors, permission_grants, sync_runs, vehicles
from etl.db.store import Store
from etl.errors import ApiError, AuthenticationError, MalformedDocumentError, RetriableApiError
from etl.fakeapi import FakeApi
from etl.sync import sync
from etl.tracking import track
from tests.conftest import Clock, make_config, max_examples

GOOD = "32c4139a-e4aa-4c6c-b357-3ae9022dbf1b"


def _record(engine: Engine, cid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(connections).where(connections.c.id == cid)).one()


def _vehicle(engine: Engine, vid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(vehicles).where(vehicles.c.id == vid)).one()


def _held(engine: Engine, cid: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(permission_grants.c.permission).where(
            permission_grants.c.connection_id == cid, permission_grants.c.valid_to.is_(None))))


def _sync(fake: FakeApi, engine: Engine, clock: Clock, **api: Any) -> Any:
    config = make_config(fake, engine.url.render_as_string(hide_password=False), **api)
    clock.advance(minutes=15)
    return sync(config, Store(engine),
                seams=Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda s: None, now=clock))


# -- ids -------------------------------------------------------------------


@pytest.mark.parametrize("value", [GOOD + "\n", GOOD + " ", " " + GOOD, "{" + GOOD + "}", GOOD + "\x00", GOOD[:-1]])
def test_an_id_must_be_the_whole_value(value: str) -> None:
    assert canonical_id(value) is None
    assert canonical_id(GOOD.upper()) == GOOD


# -- documents: descriptive fields become NULL, critical ones fail the fetch --


def _document(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": GOOD, "type": "connection",
        "attributes": {"permissions": ["read_vin"], "vehicle": {"make": "Tesla", "year": 2020}},
        "relationships": {"user": {"data": {"id": "1e258add-fb21-4293-b9ab-cf8a61f7a880"}},
                          "vehicle": {"data": {"id": "a6a425d6-c661-4b21-af7a-d6b75f80f3b0"}}},
        "meta": {"createdAt": "2024-01-01T00:00:00Z", "updatedAt": "2024-01-02T00:00:00Z"},
    }
    for path, value in changes.items():
        *parents, last = path.split("__")
        target = data
        for key in parents:
            target = target[key]
        target[last] = value
    return {"data": data}


@pytest.mark.parametrize("change, field", [
    ({"attributes__vehicle__year": 10**20}, "year"),
    ({"attributes__vehicle__year": 2**31}, "year"),
    ({"attributes__vehicle__year": 1885}, "year"),
    ({"attributes__vehicle__year": OutOfRange("9" * 5000)}, "year"),
    ({"attributes__vehicle__make": "Tes\x00la"}, "make"),
    ({"attributes__vehicle__make": "Tesla\nModel"}, "make"),
    ({"attributes__vehicle__make": "\ud800"}, "make"),
    ({"attributes__vehicle__make": "x" * 201}, "make"),
    ({"meta__createdAt": "0001-01-01T00:00:00+14:00"}, "createdAt"),
    ({"meta__createdAt": "9999-12-31T23:59:59-14:00"}, "createdAt"),
    ({"meta__createdAt": "0999-12-31T23:59:59Z"}, "createdAt"),
    ({"meta__updatedAt": 12345}, "updatedAt"),
    ({"meta__updatedAt": ["2024-01-01T00:00:00Z"]}, "updatedAt"),
])
def test_a_descriptive_value_no_database_holds_is_stored_as_null(change: dict[str, Any], field: str) -> None:
    record = parse_connection(_document(**change), expected_id=GOOD, path="/p")
    assert len(record.nulled) == 1 and record.nulled[0].endswith(field)
    assert record.permissions == {"read_vin"}
    values = {"year": record.vehicle.year, "make": record.vehicle.make,
              "createdAt": record.source_created_at, "updatedAt": record.source_updated_at}
    assert values[field] is None


def test_edges_of_the_documented_ranges_are_accepted() -> None:
    record = parse_connection(_document(
        attributes__vehicle__year=9999, attributes__vehicle__make="x" * 200, meta__createdAt="1000-01-01T00:00:00Z",
        attributes__permissions=["x" * 100, "read_vin"]), expected_id=GOOD, path="/p")
    assert (record.vehicle.year, len(record.vehicle.make or ""), record.nulled) == (9999, 200, ())
    assert record.source_created_at is not None and record.source_created_at.year == 1000


@pytest.mark.parametrize("permissions, problem", [
    (["read_vin", "read\x00vin"], "control character"),
    (["read_vin\n"], "control character"),
    (["read\tvin"], "control character"),
    ([" read_vin"], "not a permission name"),
    (["read_vin "], "not a permission name"),
    (["x" * 101], "101 characters long, more than 100"),
    (["\udc80"], "control character"),
    (["read_vin"] * 1001, "1001 entries"),
    ([OutOfRange("1" * 5000)], "expected a string"),
])
def test_a_permission_no_database_holds_makes_the_document_malformed(permissions: list[Any], problem: str) -> None:
    with pytest.raises(MalformedDocumentError, match=problem):
        parse_connection(_document(attributes__permissions=permissions), expected_id=GOOD, path="/p")


@pytest.mark.parametrize("where", ["relationships__user__data__id", "relationships__vehicle__data__id", "id"])
def test_an_id_with_a_trailing_newline_makes_the_document_malformed(where: str) -> None:
    value = ("1e258add-fb21-4293-b9ab-cf8a61f7a880" if "user" in where else GOOD) + "\n"
    with pytest.raises(MalformedDocumentError, match="not a UUID"):
        parse_connection(_document(**{where: value}), expected_id=GOOD, path="/p")


def test_json_that_is_too_deep_or_has_absurd_numbers_is_read_without_crashing() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        decode_json(b"[" * 100_000 + b"]" * 100_000)
    body = decode_json(b'{"a": ' + b"9" * 5000 + b', "b": NaN, "c": -Infinity, "d": 12}')
    assert isinstance(body["a"], OutOfRange) and isinstance(body["b"], OutOfRange) and body["d"] == 12
    assert "5000 characters" in repr(body["a"])
    with pytest.raises(ValueError, match="not JSON"):
        decode_json(b"\xff\xfe{")


# -- through the real store, on every database --------------------------


def _hostile_world(fake: FakeApi, engine: Engine) -> dict[str, Any]:
    good = [fake.add(permissions=["read_vin", "read_odometer"]) for _ in range(4)]
    nulled = {
        "huge_year": fake.add(vehicle={"make": "Tesla", "year": 10**20}),
        "int4_year": fake.add(vehicle={"make": "Tesla", "year": 2**31}),
        "nul_make": fake.add(vehicle={"make": "Tes\x00la", "year": 2020}),
        "old_created": fake.add(),
    }
    nulled["old_created"].created_at = "0001-01-01T00:00:00+14:00"
    digits = fake.add(vehicle={"make": "Tesla"})  # the year is added to the raw text: 5,000 digits
    digits.raw = json.dumps({"data": fake.document(digits)}).replace(
        '"vehicle": {', '"vehicle": {"year": ' + "9" * 5000 + ", ", 1).encode()
    nulled["digits"] = digits
    failed = {
        "nul_permission": fake.add(permissions=["read_vin", "read\x00location"]),
        "newline_user": fake.add(user_id="1e258add-fb21-4293-b9ab-cf8a61f7a880\n"),
        "deep": fake.add(),
        "surrogate_permission": fake.add(),
    }
    surrogate = json.dumps({"data": fake.document(failed["surrogate_permission"])})
    failed["surrogate_permission"].raw = surrogate.replace('"permissions": [', '"permissions": ["\\ud83d", ').encode()
    failed["deep"].raw = b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    everything = good + list(nulled.values()) + list(failed.values())
    track(Store(engine), [c.id for c in everything])
    return {"good": good, "nulled": nulled, "failed": failed}


def test_poison_documents_cost_only_their_own_connection_or_fields(
    fake_api: FakeApi, engine: Engine, clock: Clock
) -> None:
    world = _hostile_world(fake_api, engine)
    result = _sync(fake_api, engine, clock)
    assert (result.status, result.exit_code) == ("partial", 1)
    assert (result.counts.fetched, result.counts.failed, result.counts.nulled) == (9, 4, 5)
    assert "5 field(s) stored as NULL" in result.summary()
    for conn in world["good"]:
        assert _record(engine, conn.id).status == "active" and _held(engine, conn.id) == {"read_vin", "read_odometer"}
    for name, conn in world["nulled"].items():
        assert _record(engine, conn.id).status == "active", name
        assert _held(engine, conn.id) == set(conn.permissions), name  # the history is not frozen
    assert _vehicle(engine, world["nulled"]["huge_year"].vehicle_id).year is None
    assert _vehicle(engine, world["nulled"]["int4_year"].vehicle_id).year is None
    assert _vehicle(engine, world["nulled"]["nul_make"].vehicle_id).make is None
    assert _vehicle(engine, world["nulled"]["digits"].vehicle_id).year is None
    assert _record(engine, world["nulled"]["old_created"].id).source_created_at is None
    for name, conn in world["failed"].items():
        row = _record(engine, conn.id)
        assert row.status == "pending" and row.last_error and "malformed" in row.last_error, name
    with engine.connect() as conn:
        assert conn.scalar(select(sync_runs.c.fields_nulled)) == 5
        kinds = set(conn.scalars(select(fetch_errors.c.kind)))
    assert kinds == {"malformed"}
    # The next pass is not stuck either: a good connection's change is recorded.
    fake_api.set_permissions(world["good"][0].id, ["read_vin"])
    again = _sync(fake_api, engine, clock)
    assert again.counts.revoked == 1 and _held(engine, world["good"][0].id) == {"read_vin"}


def test_a_row_the_database_refuses_costs_only_its_connection(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    """Past validation, the database can still refuse a row (here, a constraint the test adds)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER refuse_poison BEFORE INSERT ON vehicles WHEN NEW.make = 'Poison' "
                              "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"))
        else:
            conn.execute(text("ALTER TABLE vehicles ADD CONSTRAINT refuse_poison CHECK (make <> 'Poison')"))
    good = [fake_api.add(permissions=["read_vin"]) for _ in range(5)]
    poison = fake_api.add(vehicle={"make": "Poison", "year": 2020})
    track(Store(engine), [c.id for c in good] + [poison.id])
    result = _sync(fake_api, engine, clock)
    assert (result.status, result.counts.fetched, result.counts.failed) == ("partial", 5, 1)
    assert all(_held(engine, c.id) == {"read_vin"} for c in good)
    row = _record(engine, poison.id)
    assert row.status == "pending" and row.last_error and "the database refused it" in row.last_error
    with engine.connect() as conn:
        error = conn.execute(select(fetch_errors)).one()
        run = conn.execute(select(sync_runs)).one()
    assert (error.connection_id, error.kind) == (poison.id, "rejected")
    assert (run.connections_fetched, run.connections_failed, run.status) == (5, 1, "partial")


def test_a_grant_the_database_refuses_costs_only_its_connection(
    fake_api: FakeApi, engine: Engine, clock: Clock
) -> None:
    """Grants and changes go by COPY on PostgreSQL: a refusal there is sorted like any statement's."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER refuse_poison BEFORE INSERT ON permission_changes "
                              "WHEN NEW.permission = 'read_poison' BEGIN SELECT RAISE(ABORT, 'poison refused'); END"))
        else:
            conn.execute(text("ALTER TABLE permission_changes ADD CONSTRAINT refuse_poison "
                              "CHECK (permission <> 'read_poison')"))
    good = [fake_api.add(permissions=["read_vin", "read_odometer"]) for _ in range(5)]
    poison = fake_api.add(permissions=["read_vin", "read_poison"])
    track(Store(engine), [c.id for c in good] + [poison.id])
    result = _sync(fake_api, engine, clock)
    assert (result.status, result.counts.fetched, result.counts.failed) == ("partial", 5, 1)
    assert all(_held(engine, c.id) == {"read_vin", "read_odometer"} for c in good)
    assert _held(engine, poison.id) == set()
    with engine.connect() as conn:
        error = conn.execute(select(fetch_errors)).one()
    assert (error.connection_id, error.kind) == (poison.id, "rejected") and "poison" in error.detail


def test_a_listing_item_with_a_newline_in_its_id_is_never_tracked(
    fake_api: FakeApi, engine: Engine, clock: Clock
) -> None:
    good = [fake_api.add() for _ in range(3)]
    fake_api.add(connection_id=GOOD + "\n")
    track(Store(engine), [c.id for c in good])
    config = make_config(fake_api, engine.url.render_as_string(hide_password=False))
    config = replace(config, sync=replace(config.sync, strategy="list"))
    result = sync(config, Store(engine),
                  seams=Seams(transport=httpx.MockTransport(fake_api.handle), sleep=lambda s: None, now=clock))
    assert result.counts.fetched == 3 and result.status == "partial"  # incomplete listing: nothing confirmed
    with engine.connect() as conn:
        ids = set(conn.scalars(select(connections.c.id)))
    assert ids == {c.id for c in good}


# -- property: arbitrary JSON in a document never stops a run --------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
    | st.sampled_from(["\x00", "\ud800", "0001-01-01T00:00:00+14:00", GOOD + "\n", "read_vin", "x" * 300]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
PATHS = ["data", "data.id", "data.type", "data.attributes", "data.attributes.permissions",
         "data.attributes.vehicle", "data.attributes.vehicle.year", "data.attributes.vehicle.make",
         "data.relationships.user.data.id", "data.relationships.vehicle", "data.meta.createdAt",
         "data.meta", "data.meta.updatedAt", "data.attributes.permissions.0"]


def _mutate(document: dict[str, Any], path: str, value: Any) -> Any:
    """The document with the value at ``path`` replaced (or the whole body, for "")."""
    keys = path.split(".")
    target: Any = document
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(keys[-1])] = value
    else:
        target[keys[-1]] = value
    return document


def test_arbitrary_json_never_stops_a_run(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    """Random values anywhere in a document (or as the whole body): the run completes (exit 0 or 1),
    the valid connections beside it are stored, and `check` passes (at teardown)."""

    @settings(max_examples=max_examples(engine, on_sqlite=40), deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(changes=st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=3),
           whole=st.one_of(st.none(), json_values))
    def one_document(changes: list[tuple[str, Any]], whole: Any) -> None:
        good = [fake_api.add(permissions=["read_vin"]) for _ in range(2)]
        hostile = fake_api.add(permissions=["read_vin", "read_odometer"])
        body: Any = {"data": fake_api.document(hostile)}
        for path, value in changes:
            try:
                body = _mutate(body, path, value)
            except (KeyError, IndexError, TypeError, ValueError):
                continue  # the path no longer exists after an earlier change
        hostile.raw = json.dumps(whole if whole is not None else body).encode("utf-8", "surrogatepass")
        track(Store(engine), [c.id for c in good] + [hostile.id])
        config = make_config(fake_api, engine.url.render_as_string(hide_password=False))
        clock.advance(minutes=15)
        result = sync(config, Store(engine),
                      seams=Seams(transport=httpx.MockTransport(fake_api.handle), sleep=lambda s: None, now=clock))
        assert result.exit_code in (0, 1)
        assert all(_held(engine, c.id) == {"read_vin"} for c in good)
        assert _record(engine, hostile.id).status in ("pending", "active")

    one_document()


# -- bounded reads --------------------------------------------------------


def _client(handler: Any, *, max_bytes: int = 1024 * 1024, deadline: float = 30.0) -> SmartcarClient:
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler))
    return _client_over(http, max_bytes=max_bytes, deadline=deadline)


def _client_over(http: httpx.Client, *, max_bytes: int = 1024 * 1024, deadline: float = 30.0) -> SmartcarClient:
    from etl.api.auth import StaticToken

    return SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("ready-token-value")), http=http,
                          retry=RetryPolicy(max_attempts=1),
                          options=ClientOptions(limits=ReadLimits(deadline=deadline, max_bytes=max_bytes)))


def _gzip_bomb(megabytes: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = b"\0" * (1024 * 1024)
    return b"".join(compressor.compress(zeros) for _ in range(megabytes)) + compressor.flush()


def test_a_gzip_bomb_is_refused_at_the_size_cap_without_inflating_it() -> None:
    bomb = _gzip_bomb(256)  # 256 MB of zeros, about 250 KB on the wire
    client = _client(lambda request: httpx.Response(
        200, headers={"content-encoding": "gzip"}, stream=httpx.ByteStream(bomb)))
    tracemalloc.start()
    try:
        with pytest.raises(ApiError, match="larger than api.max_response_bytes") as caught:
            client.get_connection(GOOD)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "too_large"
    assert peak < 16 * 1024 * 1024, peak  # about the cap (1 MiB) and one chunk, not 256 MB


def test_a_plain_body_over_the_cap_is_refused_and_one_within_is_read() -> None:
    big = b'{"data": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    client = _client(lambda request: httpx.Response(200, stream=httpx.ByteStream(big)))
    with pytest.raises(ApiError, match="larger than api.max_response_bytes"):
        client.get_connection(GOOD)
    document = json.dumps(_document()).encode()
    client = _client(lambda request: httpx.Response(200, headers={"content-encoding": "gzip"},
                                                    stream=httpx.ByteStream(gzip.compress(document))))
    record = client.get_connection(GOOD)
    assert record is not None and record.permissions == {"read_vin"}


def test_an_unknown_content_encoding_fails_the_request() -> None:
    client = _client(lambda request: httpx.Response(200, headers={"content-encoding": "br"},
                                                    stream=httpx.ByteStream(b"\x0b\x00")))
    with pytest.raises(ApiError, match="unsupported content-encoding 'br'"):
        client.get_connection(GOOD)


@pytest.fixture
def trickle_server() -> Iterator[str]:
    """A server that answers a status line and then one byte every 0.2 s, for ever (until closed)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                while not stop.wait(0.2):
                    try:
                        conn.sendall(b" ")
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(trickle_server: str) -> None:
    http = make_http_client(timeout=1.0, concurrency=1)  # each byte comes well within the timeout
    request = http.build_request("GET", trickle_server + "/v3/connections/" + GOOD)
    with pytest.raises(RetriableApiError, match=r"within api.request_deadline \(1.5s\)") as caught:
        send(http, request, path="/connections/x", limits=ReadLimits(deadline=1.5))
    assert caught.value.kind == "timeout"
    http.close()


def test_retries_stop_at_the_retry_deadline() -> None:
    elapsed = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        elapsed[0] += seconds

    attempts: list[int] = []

    def attempt() -> str:
        attempts.append(1)
        elapsed[0] += 3.0  # each attempt takes 3 s
        raise RetriableApiError(path="/p", status=503)

    policy = RetryPolicy(max_attempts=10, initial_backoff=2.0, max_backoff=100.0, jitter=lambda: 1.0,
                         sleep=sleep, deadline=20.0, clock=lambda: elapsed[0])
    with pytest.raises(RetriableApiError):
        policy.call(attempt)
    # 3 (attempt) + 2 + 3 + 4 + 3 = 15; the next wait (8 s) would end past 20 s: give up.
    assert sleeps == [2.0, 4.0] and len(attempts) == 3


def test_the_request_deadline_shrinks_to_what_the_retry_deadline_leaves() -> None:
    elapsed = [0.0]
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        elapsed[0] += 4.0
        return httpx.Response(503)

    http = make_http_client(timeout=30, concurrency=1, transport=httpx.MockTransport(handler))
    client = _client_over(http, deadline=30.0)
    client.retry = RetryPolicy(max_attempts=5, initial_backoff=1.0, jitter=lambda: 1.0, sleep=lambda s: None,
                               deadline=10.0, clock=lambda: elapsed[0])
    with pytest.raises(RetriableApiError):
        client.get_connection(GOOD)
    # 10 s for the first attempt, what is left (6 s) for the second; then a 2 s wait would use up the rest.
    assert seen == [10.0, 6.0]


# -- Retry-After and redaction ----------------------------------------------


def test_retry_after_takes_ascii_digits_only_and_dates_without_a_zone() -> None:
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    assert parse_retry_after("\u00b2", now=lambda: now) is None  # '²' passes str.isdigit()
    assert parse_retry_after("\u0663", now=lambda: now) is None  # Arabic-Indic three
    assert parse_retry_after("9" * 100, now=lambda: now) is None
    assert parse_retry_after(" 7 ", now=lambda: now) == 7.0
    assert parse_retry_after("Sun, 01 Mar 2026 12:00:30 -0000", now=lambda: now) == 30.0
    response = httpx.Response(429, headers={"retry-after": b"\xb2"})  # the byte 0xB2 reads as a superscript two
    with pytest.raises(RetriableApiError) as caught:
        classify(response, path="/p")
    assert caught.value.retry_after is None


def test_retry_after_on_a_503_is_honoured() -> None:
    fake = FakeApi(access_tokens=("ready-token-value",))
    conn = fake.add()
    sleeps: list[float] = []
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake.handle))
    client = _client_over(http)
    client.retry = RetryPolicy(max_attempts=3, sleep=sleeps.append, jitter=lambda: 1.0, max_retry_after=60)
    fake.fail_next(503, headers={"Retry-After": "7"})
    assert client.get_connection(conn.id) is not None
    assert sleeps == [7.0]


def test_an_error_body_that_echoes_the_token_or_secret_is_redacted(
    fake_api: FakeApi, engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    conn = fake_api.add()
    track(Store(engine), [conn.id])

    def echo(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v3/connections/"):
            token = request.headers["authorization"].removeprefix("Bearer ")
            return httpx.Response(400, json={"errors": [{"status": "400", "code": "bad_request",
                                                         "detail": f"token {token} secret {fake_api.client_secret}"}]})
        return fake_api.handle(request)

    config = make_config(fake_api, engine.url.render_as_string(hide_password=False))
    result = sync(config, Store(engine),
                  seams=Seams(transport=httpx.MockTransport(echo), sleep=lambda s: None, now=clock))
    assert result.counts.failed == 1
    row = _record(engine, conn.id)
    assert "[redacted]" in row.last_error
    for secret in [fake_api.client_secret, *fake_api.issued_tokens]:
        assert secret not in row.last_error and secret not in caplog.text


def test_a_token_endpoint_that_echoes_the_secret_is_redacted(fake_api: FakeApi) -> None:
    from etl.api.auth import ClientCredentials

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client", "error_description": request.content.decode()})

    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(echo))
    auth = ClientCredentials(http=http, token_url="https://auth.test/token", client_id="abc",
                             client_secret=Secret("s3cr3t/with+odd=chars"), retry=RetryPolicy(max_attempts=1))
    with pytest.raises(AuthenticationError) as caught:
        auth.token()
    assert "s3cr3t" not in str(caught.value) and "[redacted]" in str(caught.value)


def test_api_config_read_limits_follow_the_config() -> None:
    api = ApiConfig(request_deadline_seconds=42.0, max_response_bytes=4096)
    assert api.read_limits() == ReadLimits(deadline=42.0, max_bytes=4096)


@pytest.mark.parametrize("db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_a_database_lost_during_copy_is_sorted_as_unreachable(engine: Engine) -> None:
    """insert_rows (COPY on PostgreSQL) raises what a statement would, so a lost server aborts the run."""
    import datetime as dt

    from sqlalchemy import exc

    from etl.db.dialects import dialect_for
    from etl.db.models import permission_changes

    cid = "00000000-0000-4000-8000-0000000000aa"
    Store(engine).track([cid], at=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    row = {"connection_id": cid, "permission": "read_vin", "change": "granted",
           "observed_at": dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "previous_observed_at": None,
           "source_updated_at": None, "run_id": None}
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")  # type: ignore[arg-type]
        with pytest.raises(exc.DBAPIError) as caught:
            dialect_for(conn).insert_rows(conn, permission_changes, [row])
        conn.invalidate()
    assert dialect_for(engine).error_kind(caught.value) == "unreachable"
