"""The full listing: response variants, paging that cannot run away, confirmations, strategies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from etl.api.listing import ListingPage, Paginator
from etl.context import Seams
from etl.db.models import connections, sync_runs
from etl.db.store import Store
from etl.errors import MalformedDocumentError
from etl.fakeapi import FakeApi
from etl.sync import sync
from etl.tracking import track
from tests.conftest import Clock, Runner

LISTING = "/v3/connections"


@pytest.fixture(autouse=True)
def track_listed(request: pytest.FixtureRequest) -> None:
    """These tests are about the listing itself: the syncs here track what it shows (sync.track_listed)."""
    if "run_sync" in request.fixturenames:
        run_sync: Runner = request.getfixturevalue("run_sync")
        run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, track_listed=True))


def test_by_default_a_listing_never_widens_the_tracked_set(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    ids = fake.populate(150, seed=12)
    track(Store(engine), ids[:20])
    run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, track_listed=False))
    result = run_sync(strategy="list")
    assert (result.status, result.counts.fetched) == ("succeeded", 20)
    assert statuses(engine) == dict.fromkeys(ids[:20], "active")  # the other 130 were listed, not stored


def listing_requests(fake: FakeApi) -> int:
    return sum(1 for m, p in fake.requests if m == "GET" and p == LISTING)


def gets(fake: FakeApi) -> int:
    return fake.count("GET", LISTING + "/")


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(connections.c.id, connections.c.status)).all())


@pytest.mark.parametrize("page_key", ["page", "pageNumber"])
@pytest.mark.parametrize("next_link", ["relative", "absolute", "missing"])
@pytest.mark.parametrize("total", [True, False])
def test_listing_variants(run_sync: Runner, engine: Engine, page_key: str, next_link: str, total: bool) -> None:
    fake = run_sync.fake
    ids = fake.populate(250, seed=1)
    fake.listing = {"page_key": page_key, "next": next_link, "total": total}
    result = run_sync(strategy="list")
    assert (result.status, result.counts.fetched, result.planned) == ("succeeded", 250, 250)
    assert listing_requests(fake) == 3 and gets(fake) == 0
    assert statuses(engine) == dict.fromkeys(ids, "active")  # new connections are tracked (track_listed)


def test_a_connection_removed_between_two_pages_causes_no_false_deletion(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    ids = fake.populate(250, seed=2)
    track(Store(engine), ids)
    on_page_1, first_of_page_2 = ids[10], ids[100]

    def remove_after_page_1(request: httpx.Request) -> None:
        if request.url.params.get("page[number]") == "1" and on_page_1 in fake.connections:
            fake.remove(on_page_1)  # page 2 now starts one later: ids[100] slips onto page 1

    fake.hooks.append(remove_after_page_1)
    result = run_sync(strategy="list")
    assert result.status == "succeeded"
    assert fake.count("GET", f"{LISTING}/{first_of_page_2}") == 1 and gets(fake) == 1  # confirmed, found
    assert set(statuses(engine).values()) == {"active"}  # nothing marked deleted
    fake.hooks.clear()
    result = run_sync(strategy="list")  # the next listing misses the removed one: its GET says 404
    assert statuses(engine)[on_page_1] == "deleted" and result.counts.deleted == 1


def test_a_connection_seen_twice_across_pages_counts_once(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    fake.populate(150, seed=3)

    def add_in_front_after_page_1(request: httpx.Request) -> None:
        if request.url.params.get("page[number]") == "1" and len(fake.connections) == 150:
            newcomer = fake.add(permissions=["read_vin"])
            fake.connections = {newcomer.id: newcomer, **{k: v for k, v in fake.connections.items()
                                                          if k != newcomer.id}}

    fake.hooks.append(add_in_front_after_page_1)
    result = run_sync(strategy="list")
    assert result.counts.fetched == 150 and result.planned == 150  # page 1's last item came again on page 2
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(connections)) == 150


def test_a_listing_that_fails_on_page_3_deletes_nothing(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    ids = fake.populate(450, seed=4)
    track(Store(engine), ids)
    run_sync(strategy="list")
    for gone in ids[300:310]:  # really gone, but the listing will not get that far
        fake.remove(gone)
    fake.fail_next(500, match="page[number]=3", times=100)
    result = run_sync(strategy="list")
    assert (result.status, result.exit_code, result.counts.fetched) == ("partial", 1, 200)
    assert gets(fake) == 0
    assert set(statuses(engine).values()) == {"active"}
    with engine.connect() as conn:
        error = conn.scalar(select(sync_runs.c.error).where(sync_runs.c.id == result.run_id))
    assert error.startswith("listing stopped at page 3: server HTTP 500")


def test_a_tracked_connection_missing_from_a_complete_listing_is_confirmed_then_deleted(
    run_sync: Runner, engine: Engine
) -> None:
    fake = run_sync.fake
    fake.populate(20, seed=5)
    unknown = "00000000-0000-4000-8000-0000000000ff"
    track(Store(engine), [unknown])
    result = run_sync(strategy="list")
    assert fake.count("GET", f"{LISTING}/{unknown}") == 1 and gets(fake) == 1
    assert statuses(engine)[unknown] == "deleted" and result.counts.deleted == 1 and result.planned == 21


def test_untracked_and_unwanted_connections_are_left_alone(run_sync: Runner, engine: Engine, clock: Clock) -> None:
    fake = run_sync.fake
    ids = fake.populate(5, seed=6)
    track(Store(engine), ids[:2])
    from etl.tracking import untrack

    untrack(Store(engine), [ids[1]])
    run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, track_listed=False))
    result = run_sync(strategy="list")
    assert result.counts.fetched == 1
    assert statuses(engine) == {ids[0]: "active", ids[1]: "pending"}


def test_malformed_and_unreadable_items(run_sync: Runner, engine: Engine) -> None:
    fake = run_sync.fake
    ids = fake.populate(5, seed=7)
    fake.connections[ids[0]].broken = "bad_permission"
    result = run_sync(strategy="list")
    assert (result.status, result.counts.fetched, result.counts.failed) == ("partial", 4, 1)
    assert statuses(engine)[ids[0]] == "pending"  # its row carries the error
    fake.connections[ids[1]].broken = "not_json"  # listed as an item with no readable id
    result = run_sync(strategy="list")
    assert result.status == "partial" and "without a readable id" in (status_error(engine, result.run_id) or "")


def status_error(engine: Engine, run_id: int) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(select(sync_runs.c.error).where(sync_runs.c.id == run_id))


# -- the paginator ------------------------------------------------------------------------------

def page(number: int, ids: list[str], **body: Any) -> ListingPage:
    return ListingPage(number=number, body={"data": [{"id": i} for i in ids], **body},
                       malformed=[(i, MalformedDocumentError(path="/")) for i in ids])


@pytest.mark.parametrize("body, problem", [
    ({"meta": {"page": 3}}, "asked for page 1, the API answered page 3"),
    ({"meta": {"pageNumber": 2}}, "answered page 2"),
    ({"links": {"next": "/v3/connections?page[number]=1&page[size]=2"}}, "points to page 1"),
    ({"links": {"next": "https://x/v3/connections?page[number]=9"}}, "runaway paging"),
])
def test_paginator_refuses_pages_that_go_wrong(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(MalformedDocumentError, match=problem.replace("[", r"\[")):
        Paginator(size=2).advance(page(1, ["a", "b"], **body))


def test_paginator_refuses_a_repeated_page_and_paging_past_the_total() -> None:
    paginator = Paginator(size=2)
    assert paginator.advance(page(1, ["a", "b"]))
    with pytest.raises(MalformedDocumentError, match="page 2 repeats page 1"):
        paginator.advance(page(2, ["a", "b"]))
    paginator = Paginator(size=2, start=3)
    with pytest.raises(MalformedDocumentError, match="past totalCount 2"):
        paginator.advance(page(3, ["c", "d"], meta={"totalCount": 2}))


def test_paginator_stops_on_an_empty_page_or_null_next() -> None:
    assert not Paginator(size=2).advance(page(1, []))
    assert not Paginator(size=2).advance(page(1, ["a", "b"], links={"next": None}))
    assert not Paginator(size=2).advance(page(1, ["a", "b"], meta={"totalCount": 2}))
    assert Paginator(size=2).advance(page(1, ["a", "b"]))  # a full page, nothing else known


# -- strategies ---------------------------------------------------------------------------------

def test_list_strategy_on_1000_connections_makes_at_most_10_listing_requests(
    run_sync: Runner, engine: Engine
) -> None:
    fake = run_sync.fake
    ids = fake.populate(1000, seed=8)
    track(Store(engine), ids + ["00000000-0000-4000-8000-0000000000aa"])  # one the API does not know
    result = run_sync(strategy="list")
    assert listing_requests(fake) <= 10 and gets(fake) == 1  # one GET per confirmation
    assert (result.counts.fetched, result.counts.deleted, result.requests) == (1000, 1, 11)


def test_auto_picks_the_listing_for_1000_and_per_id_for_5_of_1000(
    fake_api: FakeApi, engine: Engine, clock: Clock
) -> None:
    ids = fake_api.populate(1000, seed=9)
    runner = Runner(fake_api, engine, clock)
    runner.config = replace(runner.config, sync=replace(runner.config.sync, strategy="auto"))
    track(Store(engine), ids[:5])
    result = runner()
    assert gets(fake_api) == 5 and listing_requests(fake_api) == 1  # one probe for totalCount
    assert result.counts.fetched == 5
    track(Store(engine), ids[5:])
    result = runner(ignore_due=True)
    assert result.counts.fetched == 1000
    assert gets(fake_api) == 5 and listing_requests(fake_api) == 1 + 10  # the probe was page 1


def test_auto_with_few_known_connections_does_not_probe(fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = fake_api.populate(3, seed=10)
    track(Store(engine), ids[:1])
    base = Runner(fake_api, engine, clock).config
    config = replace(base, sync=replace(base.sync, strategy="auto"))
    sync(config, Store(engine), seams=Seams(transport=httpx.MockTransport(fake_api.handle), now=clock))
    assert listing_requests(fake_api) == 0 and gets(fake_api) == 1


def test_a_stop_request_during_a_listing_ends_the_run_gracefully(run_sync: Runner, engine: Engine) -> None:
    import threading

    fake = run_sync.fake
    fake.populate(350, seed=11)
    cancelled = threading.Event()

    def stop_while_page_3_fails(request: httpx.Request) -> None:
        if request.url.params.get("page[number]") == "3":
            cancelled.set()  # what the daemon does on SIGTERM, while the client is between retries

    fake.fail_next(503, match="page[number]=3", times=10)
    fake.hooks.append(stop_while_page_3_fails)
    result = run_sync(strategy="list", cancelled=cancelled)
    assert (result.status, result.counts.fetched) == ("aborted", 200)
    assert listing_requests(fake) == 3 and gets(fake) == 0  # no retry after the stop request
    assert status_error(engine, result.run_id) == "stopped on request after 200 of 200 connections"


def test_a_listing_longer_than_what_it_remembers_confirms_exactly_the_missing(
    run_sync: Runner, engine: Engine
) -> None:
    """Pages of 10 and batches of 15 remember 115 ids; 400 are listed. The database says what was seen."""
    fake = run_sync.fake
    ids = fake.populate(400, seed=8)
    track(Store(engine), ids)
    run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, page_size=10, batch_size=15))
    assert run_sync(strategy="list").counts.fetched == 400
    gone = [ids[3], ids[150], ids[399]]  # early, middle, and on the last page (stored last)
    for connection_id in gone:
        fake.remove(connection_id)
    before = gets(fake)
    result = run_sync(strategy="list")
    assert gets(fake) - before == 3 and all(fake.count("GET", f"{LISTING}/{c}") == 1 for c in gone)
    assert result.counts.deleted == 3 and result.counts.fetched == 397
    assert {c for c, s in statuses(engine).items() if s == "deleted"} == set(gone)


def test_the_listing_remembers_a_bounded_number_of_ids() -> None:
    from etl.fetch import RecentIds

    recent = RecentIds(3)
    assert [recent.add(i) for i in ("a", "b", "a", "c", "d")] == [True, True, False, True, True]
    assert list(recent) == ["b", "c", "d"] and "a" not in recent and len(recent) == 3
    assert recent.add("a") and list(recent) == ["c", "d", "a"]


# -- one page and the paginator's errors, exactly ---------------------------------------------

def answer(status: int, body: Any = None, content: bytes | None = None) -> httpx.Response:
    request = httpx.Request("GET", "https://api.test/v3/connections?page[number]=3")
    if content is None:
        return httpx.Response(status, json=body, request=request)
    return httpx.Response(status, content=content, request=request)


@pytest.mark.parametrize("response, message", [
    (answer(503, {"errors": []}),
     "http HTTP 503 Service Unavailable on /connections: page 3: the listing answered 503"),
    (answer(200, content=b'{"data": ['),
     "malformed HTTP 200 on /connections: page 3: "),
    (answer(200, {"data": {"id": "x"}}),
     "malformed HTTP 200 on /connections: page 3: data is not an array"),
    (answer(200, ["data"]),
     "malformed HTTP 200 on /connections: page 3: data is not an array"),
])
def test_a_listing_page_that_cannot_be_read_names_the_page_the_path_and_the_status(
        response: httpx.Response, message: str) -> None:
    from etl.api.listing import listing_page
    from etl.errors import ApiError

    with pytest.raises(ApiError) as caught:
        listing_page(3, response)
    assert str(caught.value).startswith(message) and caught.value.path == "/connections"
    assert caught.value.status == response.status_code
    if response.status_code == 200:  # decode_json's own words follow the page number
        assert type(caught.value) is MalformedDocumentError and len(str(caught.value)) > len("page 3: ") + 30


def test_a_listing_page_sorts_its_items_into_records_malformed_and_unreadable() -> None:
    from etl.api.listing import listing_page

    fake_api = FakeApi()
    good, bad = fake_api.populate(2, seed=13)
    broken = {**fake_api.document(fake_api.connections[bad]), "type": "vehicle"}
    items = [fake_api.document(fake_api.connections[good]), broken, "not an object", {"id": "not-a-uuid"}]
    listed = listing_page(3, answer(200, {"data": items}))
    assert listed.number == 3 and [r.connection_id for r in listed.records] == [good]
    assert [(i, str(e)) for i, e in listed.malformed] == [
        (bad, "malformed HTTP 200 on /connections: data.type is 'vehicle', expected 'connection'")]
    assert listed.unreadable == ["malformed HTTP 200 on /connections: data is not an object",
                                 "malformed HTTP 200 on /connections: data.id is not a UUID: 'not-a-uuid'"]
    assert listed.ids == [good, bad]


@pytest.mark.parametrize("start, body, message", [
    (1, {"meta": {"page": 3}}, "asked for page 1, the API answered page 3"),
    (3, {"meta": {"totalCount": 2}}, "page 3 is past totalCount 2"),
    (1, {"links": {"next": "/v3/connections?page[number]=1"}}, "links.next of page 1 points to page 1"),
    (1, {"links": {"next": "/v3/connections?page[number]=3"}}, "page 1 points to page 3: runaway paging"),
])
def test_the_paginators_errors_name_the_path_the_status_and_the_page(
        start: int, body: dict[str, Any], message: str) -> None:
    paginator = Paginator(size=2, start=start)
    with pytest.raises(MalformedDocumentError) as caught:
        paginator.advance(page(paginator.number, ["a", "b"], **body))
    assert str(caught.value) == f"malformed HTTP 200 on /connections: {message}"
    assert (caught.value.path, caught.value.status) == ("/connections", 200)


def test_the_paginators_error_for_a_repeated_page_is_exact() -> None:
    paginator = Paginator(size=2)
    assert paginator.advance(page(1, ["a", "b"]))
    with pytest.raises(MalformedDocumentError) as caught:
        paginator.advance(page(2, ["a", "b"]))
    assert str(caught.value) == "malformed HTTP 200 on /connections: page 2 repeats page 1"
    assert (caught.value.path, caught.value.status) == ("/connections", 200)


def test_the_page_just_past_the_total_is_an_empty_end_not_an_error() -> None:
    paginator = Paginator(size=2, start=2)
    assert not paginator.advance(page(2, [], meta={"totalCount": 2}))  # 2 of 2 fit on page 1
    assert paginator.total == 2


def test_the_paginator_pages_up_to_max_pages_and_no_further() -> None:
    paginator = Paginator(size=2, max_pages=2)
    assert paginator.advance(page(1, ["a", "b"])) and paginator.number == 2
    with pytest.raises(MalformedDocumentError, match="page 2 points to page 3: runaway paging"):
        paginator.advance(page(2, ["c", "d"]))
    assert Paginator(size=2, start=999_999).advance(page(999_999, ["a", "b"]))  # the default cap: a million pages
    with pytest.raises(MalformedDocumentError, match="page 1000000 points to page 1000001"):
        Paginator(size=2, start=1_000_000).advance(page(1_000_000, ["a", "b"]))


def test_a_next_link_without_a_page_number_leads_to_the_next_page() -> None:
    paginator = Paginator(size=2)
    assert paginator.advance(page(1, ["a", "b"], links={"next": "/v3/connections?cursor=b"}))
    assert paginator.number == 2
