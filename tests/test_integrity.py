"""What a server, a proxy or a wrong URL says cannot rewrite the history or silently stop the mirror.

A 404 is a deletion only when it is Smartcar's own answer for a missing resource; a pass that would
delete more than ``sync.max_deleted_share`` deletes nothing; a retry that would end past the pass's
deadline is deferred; a listing that goes round or was resumed past its end, and a broken first page
under ``auto``, neither stop the mirror; a vehicle's 429 is not the application's; an outage stops the
pass early.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from etl.api.answers import classify
from etl.db.models import backfills, connections, fetch_errors, permission_grants, rate_budgets, sync_runs
from etl.db.store import Store
from etl.errors import ApiError, SyncAborted
from etl.fakeapi import FakeApi
from etl.fetch import SyncListing
from etl.metrics import Metrics
from etl.outcomes import Fetched
from etl.runloop import RunLoop
from etl.status import status_report
from etl.tracking import track
from tests.conftest import Runner

SMARTCAR_404 = {"errors": [{"status": "404", "code": "not_found", "title": "Not Found", "detail": "gone"}]}


def with_sync(run_sync: Runner, **settings: Any) -> None:
    run_sync.config = replace(run_sync.config, sync=replace(run_sync.config.sync, **settings))


def world(run_sync: Runner, engine: Engine, count: int) -> list[str]:
    ids = run_sync.fake.populate(count, seed=7)
    track(Store(engine), ids)
    return ids


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(connections.c.id, connections.c.status)).all())


def open_grants(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(permission_grants)
                           .where(permission_grants.c.valid_to.is_(None))) or 0


# -- which 404 is a deletion ----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "deletion"), [
    (SMARTCAR_404, True),
    ({"errors": [{"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "CONNECTION", "extra": [1]}]}, True),
    ({"errors": [{"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "PATH"}]}, False),
    ({"errors": [{"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "VERSION"}]}, False),
    ({"errors": [{"status": "404", "code": "RESOURCE_NOT_FOUND:PATH"}]}, False),
    ({"errors": [{"status": "500", "code": "not_found"}]}, False),
    ({"errors": []}, False),
    ({"error": "route not found"}, False),
    ({"type": "RESOURCE_NOT_FOUND", "code": "PATH", "statusCode": 404}, False),  # the v2 flat object
    (None, False),  # an empty body
    ("<html><title>404 Not Found</title>nginx</html>", False),
])
def test_only_smartcars_own_404_for_a_missing_resource_is_an_answer(body: Any, deletion: bool) -> None:
    response = httpx.Response(404, text=body) if isinstance(body, str) else \
        httpx.Response(404) if body is None else httpx.Response(404, json=body)
    if deletion:
        assert classify(response, path="/connections/x") is None
        return
    with pytest.raises(ApiError) as caught:
        classify(response, path="/connections/x")
    assert caught.value.kind == "unrecognised_404" and "api.base_url" in str(caught.value)


@pytest.mark.parametrize(("response", "said"), [
    (httpx.Response(404), "no error body"),
    (httpx.Response(404, text="<html><title>404 Not Found</title>nginx</html>", headers={"content-type": "text/html"}),
     "HTML page: 404 Not Found"),
])
def test_a_404_that_is_not_smartcars_says_what_came_and_what_to_check(response: httpx.Response, said: str) -> None:
    with pytest.raises(ApiError) as caught:
        classify(response, path="/connections/x")
    assert caught.value.detail == f"not Smartcar's answer for a missing connection ({said}); is api.base_url right?"


@pytest.mark.parametrize("shape", ["html", "empty", "other_json"])
def test_a_404_that_is_not_smartcars_fails_the_fetch_and_deletes_nothing(
        run_sync: Runner, engine: Engine, shape: str) -> None:
    ids = world(run_sync, engine, 3)
    run_sync()
    grants = open_grants(engine)
    run_sync.fake.fail_next(404, shape=shape, match=ids[0])
    result = run_sync(ignore_due=True)
    assert (result.status, result.exit_code, result.counts.deleted, result.counts.failed) == ("partial", 1, 0, 1)
    assert set(statuses(engine).values()) == {"active"} and open_grants(engine) == grants
    with engine.connect() as conn:
        assert conn.scalar(select(fetch_errors.c.kind)) == "unrecognised_404"


def test_a_wrong_base_url_deletes_nothing(run_sync: Runner, engine: Engine) -> None:
    world(run_sync, engine, 12)
    run_sync()
    grants = open_grants(engine)
    run_sync.config = replace(run_sync.config, api=replace(run_sync.config.api, base_url="https://api.test/v2"))
    result = run_sync(ignore_due=True)  # the fake answers an unknown path as Smartcar does: RESOURCE_NOT_FOUND/PATH
    assert (result.status, result.exit_code, result.counts.deleted, result.counts.failed) == ("failed", 1, 0, 12)
    assert set(statuses(engine).values()) == {"active"} and open_grants(engine) == grants


def proxy_404s_everything(fake: FakeApi) -> None:
    """A proxy (or a server) that answers every GET with a 404 shaped like Smartcar's own."""
    fake.fail_next(404, match="/v3/connections", times=10_000)


def test_the_mass_deletion_guard_holds_back_every_deletion(run_sync: Runner, engine: Engine) -> None:
    world(run_sync, engine, 12)
    run_sync()
    grants = open_grants(engine)
    proxy_404s_everything(run_sync.fake)
    metrics = Metrics()
    result = run_sync(ignore_due=True, metrics=metrics)
    assert (result.status, result.exit_code, result.counts.deleted, result.deletions_held) == ("failed", 1, 0, 12)
    assert result.error is not None and "sync.max_deleted_share" in result.error \
        and "--accept-deletions" in result.error
    assert set(statuses(engine).values()) == {"active"} and open_grants(engine) == grants
    runs = status_report(Store(engine))["runs"]
    assert (runs[0]["status"], runs[0]["deletions_held"]) == ("failed", 12)
    assert metrics.registry.get_sample_value("smartcar_etl_last_run_deletions_held", {"application": "default"}) == 12
    with_sync(run_sync, max_deleted_share=1.0)  # what --accept-deletions does for one run
    result = run_sync(ignore_due=True)
    assert (result.status, result.counts.deleted) == ("succeeded", 12) and open_grants(engine) == 0


def test_a_few_deletions_among_many_answers_are_stored(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 12)
    run_sync()
    for gone in ids[:6]:  # six of twelve: not more than half
        run_sync.fake.remove(gone)
    result = run_sync(ignore_due=True)
    assert (result.status, result.counts.deleted, result.deletions_held) == ("succeeded", 6, 0)


def test_a_listing_that_would_confirm_a_mass_deletion_is_held_back(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 12)
    run_sync()
    for gone in ids[:9]:
        run_sync.fake.remove(gone)
    result = run_sync(strategy="list")
    assert (result.status, result.counts.deleted, result.deletions_held) == ("failed", 0, 9)
    assert set(statuses(engine).values()) == {"active"}


def test_a_stopped_pass_stores_none_of_the_404s_it_held(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 12)
    run_sync()
    for gone in ids[:3]:
        run_sync.fake.remove(gone)
    stop = threading.Event()  # SIGTERM, once the three 404s are in

    def stop_after_the_404s(request: httpx.Request) -> None:
        if all(run_sync.fake.count("GET", f"/v3/connections/{gone}") == 2 for gone in ids[:3]):
            stop.set()

    run_sync.fake.hooks.append(stop_after_the_404s)
    result = run_sync(ignore_due=True, cancelled=stop)
    assert result.status == "aborted" and result.counts.deleted == 0
    assert set(statuses(engine).values()) == {"active"}


# -- waiting, budgets and outages ---------------------------------------------------------------------------

def test_a_retry_that_would_end_past_the_deadline_is_deferred(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 3)
    with_sync(run_sync, max_duration_seconds=5.0)
    run_sync.fake.fail_next(429, headers={"Retry-After": "40"}, match=ids[1], code="VEHICLE")
    result = run_sync()
    assert max(run_sync.sleeps, default=0) < 5, run_sync.sleeps
    assert (result.exit_code, result.counts.fetched, result.deferred, result.counts.failed) == (0, 2, 1, 0)
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.last_attempt_at).where(connections.c.id == ids[1])) is None
        assert conn.scalar(select(func.count()).select_from(fetch_errors)) == 0


def test_a_vehicles_429_retries_that_connection_and_leaves_the_budget(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 3)
    run_sync.fake.fail_next(429, headers={"Retry-After": "30"}, match=ids[0], code="VEHICLE")
    result = run_sync()
    assert (result.status, result.counts.fetched) == ("succeeded", 3)
    assert run_sync.sleeps == [30.0] and result.rate_limit_wait == 0  # that connection waited, nothing else
    with engine.connect() as conn:
        assert conn.scalar(select(rate_budgets.c.tokens)) >= 0  # the application's bucket was not emptied
        assert conn.scalar(select(fetch_errors.c.kind)) is None


@pytest.mark.parametrize("failure", [{"status": 503}, {"status": None, "error": "connect"}])
def test_an_outage_stops_the_pass_early(run_sync: Runner, engine: Engine, failure: dict[str, Any]) -> None:
    world(run_sync, engine, 50)
    # One request in flight: with none of a real API's latency, workers would fetch far ahead of the run loop.
    run_sync.config = replace(run_sync.config, api=replace(run_sync.config.api, concurrency=1))
    run_sync.fake.fail_next(**failure, match="/v3/connections/", times=100_000)
    result = run_sync()
    requests = run_sync.fake.count("GET", "/v3/connections/")
    assert requests == 10 * 5, requests  # ten connections of five attempts each
    assert (result.status, result.exit_code) == ("failed", 1)
    assert result.error is not None and "sync.outage_after" in result.error
    with engine.connect() as conn:
        untouched = conn.scalar(select(func.count()).select_from(connections)
                                .where(connections.c.last_attempt_at.is_(None)))
    assert untouched == 40  # the rest stay due
    run_sync.fake.faults.clear()
    result = run_sync(advance=dt.timedelta(seconds=1))  # the next pass probes again
    assert result.status == "succeeded" and result.counts.fetched >= untouched


def test_failures_that_are_not_in_a_row_do_not_stop_the_pass(run_sync: Runner, engine: Engine) -> None:
    ids = world(run_sync, engine, 30)
    for n, cid in enumerate(ids):
        if n % 3:
            run_sync.fake.fail_next(503, match=cid, times=5)
    result = run_sync()
    assert (result.status, result.counts.fetched, result.counts.failed) == ("partial", 10, 20)


# -- the listing ---------------------------------------------------------------------------------------------

class GoingRound(FakeApi):
    """A listing whose pages alternate between two full pages, with no meta and no links, for ever."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        number = request.url.params.get("page[number]")
        if number is not None:
            if self.count("GET", "/v3/connections") > 40:
                pytest.fail("the listing did not end")
            request = httpx.Request(request.method, request.url.copy_set_param(
                "page[number]", str((int(number) - 1) % 2 + 1)), headers=request.headers)
        return super().handle(request)


def test_a_listing_that_goes_round_ends_as_incomplete(engine: Engine, clock: Any) -> None:
    fake = GoingRound(client_id="test-client", client_secret="test-client-secret")
    fake.listing = {"page_key": "unread", "next": "missing", "total": False}
    run_sync = Runner(fake, engine, clock)
    ids = world(run_sync, engine, 200)
    track(Store(engine), ["00000000-0000-4000-8000-000000000001"])  # tracked, never listed
    result = run_sync(strategy="list")
    assert result.status == "partial" and result.counts.fetched == 200
    assert result.error is not None and "goes round" in result.error
    assert fake.count("GET", "/v3/connections/") == 0  # nothing is confirmed from an incomplete listing
    assert set(statuses(engine).values()) == {"active", "pending"} and len(ids) == 200


@pytest.mark.parametrize("strategy", ["list", "auto"])
def test_a_listing_resumed_past_its_end_starts_again(run_sync: Runner, engine: Engine, strategy: str) -> None:
    ids = world(run_sync, engine, 40)
    with_sync(run_sync, page_size=2)
    run_sync(strategy="list")
    store = Store(engine)
    place = store.listing_place(SyncListing(), at=run_sync.clock())
    with engine.begin() as conn:  # a listing that ran out of time before page 15 (of 20)
        conn.execute(update(backfills).where(backfills.c.id == place.id).values(next_page=15))
    for gone in ids[24:]:
        run_sync.fake.remove(gone)  # 24 left: 12 pages
    result = run_sync(strategy=strategy, ignore_due=True)
    assert (result.status, result.counts.deleted) == ("succeeded", 16)
    assert [statuses(engine)[i] for i in ids[24:]] == ["deleted"] * 16
    result = run_sync(strategy=strategy, ignore_due=True)
    assert result.status == "succeeded"  # and it keeps working


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 404, "shape": "html"}, {"status": 200}])
def test_auto_fetches_by_id_when_the_listing_fails(run_sync: Runner, engine: Engine, fault: dict[str, Any]) -> None:
    world(run_sync, engine, 3)
    run_sync.fake.fail_next(**fault, match="page[number]=1", times=100)  # 200: an error body, not a listing
    result = run_sync(strategy="auto")
    assert (result.status, result.exit_code, result.counts.fetched) == ("succeeded", 0, 3)


def test_a_run_that_an_error_ends_early_is_aborted_and_exits_3(run_sync: Runner, engine: Engine) -> None:
    from etl.context import Pass, Seams

    class Broken:
        planned, incomplete, out_of_time = 1, None, False

        def outcomes(self) -> Any:
            raise ApiError(path="/connections", detail="the source broke")
            yield Fetched  # pragma: no cover - a generator

    store = Store(engine)
    ctx = Pass.open(run_sync.config, store, Seams(transport=httpx.MockTransport(run_sync.fake.handle)))
    run_id, started = store.start_run(trigger="sync", planned=1, at=run_sync.clock())
    with pytest.raises(SyncAborted) as caught:
        RunLoop(ctx, Broken(), run_id, started)()
    assert caught.value.exit_code == 3
    with engine.connect() as conn:
        assert conn.scalar(select(sync_runs.c.status)) == "aborted"


@pytest.mark.parametrize(("body", "kind"), [
    ({"errors": [{"status": "429", "type": "RATE_LIMIT", "code": "VEHICLE"}]}, "vehicle_limit"),
    ({"type": "RATE_LIMIT", "code": "VEHICLE", "statusCode": 429}, "vehicle_limit"),  # the v2 flat object
    ({"errors": [{"status": "429", "type": "RATE_LIMIT", "code": "SMARTCAR_API"}]}, "rate_limited"),
    ({"type": "RATE_LIMIT", "code": "SMARTCAR_API", "statusCode": 429}, "rate_limited"),
    (None, "rate_limited"),  # no body: the application's limit, as before
])
def test_a_vehicles_429_is_told_from_the_applications_in_either_error_shape(body: Any, kind: str) -> None:
    from etl.errors import RetriableApiError

    response = httpx.Response(429) if body is None else httpx.Response(429, json=body)
    with pytest.raises(RetriableApiError) as caught:
        classify(response, path="/connections/x")
    assert caught.value.kind == kind
