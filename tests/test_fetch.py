"""How fetching spends its threads and its requests (``etl.fetch.fetch_outcomes``).

Behaviour only; the speed is measured by ``benchmarks/bench_sync.py --static`` and ``bench_latency.py``.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from etl.api.auth import StaticToken
from etl.api.client import SmartcarClient
from etl.api.transport import make_http_client
from etl.config import Secret
from etl.errors import FatalApiError
from etl.fakeapi import FakeApi
from etl.fetch import PageAhead, fetch_outcomes
from etl.outcomes import Fetched, Postponed, Result


class Slow:
    """A MockTransport handler answering after ``delay``, noting which thread asked and how many it held at once."""

    def __init__(self, fake: FakeApi, delay: float) -> None:
        self.fake, self.delay = fake, delay
        self.active = self.peak = 0
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.threads.append(threading.current_thread().name)
        try:
            time.sleep(self.delay)
            return self.fake.handle(request)
        finally:
            with self.lock:
                self.active -= 1


def client_for(handler: object) -> SmartcarClient:
    http = make_http_client(timeout=5, concurrency=4, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]
    return SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("t")), http=http)


def fetch_threads(within: float = 0.0) -> list[threading.Thread]:
    """The fetch threads still alive (after waiting up to ``within`` seconds for them to end on their own)."""
    give_up = time.monotonic() + within
    while True:
        alive = [t for t in threading.enumerate() if t.name.startswith("fetch")]
        if not alive or time.monotonic() >= give_up:
            return alive
        time.sleep(0.01)


def fetch_all(handler: object, ids: list[str], concurrency: int = 4) -> list[Result]:
    """Every outcome of ``fetch_outcomes`` over ``ids`` through a client on ``handler``."""
    client = client_for(handler)
    try:
        return list(fetch_outcomes(ids, client=client, concurrency=concurrency))
    finally:
        client.http.close()


def world(count: int, seed: int) -> tuple[FakeApi, list[str]]:
    fake = FakeApi(access_tokens=("t",))
    return fake, fake.populate(count, seed=seed)


def test_a_slow_api_is_fetched_with_every_request_in_flight_it_may_have() -> None:
    fake, ids = world(24, 4)
    slow = Slow(fake, delay=0.05)
    outcomes = fetch_all(slow, ids)
    assert sorted(o.connection_id for o in outcomes) == sorted(ids)
    assert all(isinstance(o, Fetched) for o in outcomes)
    assert slow.peak == 4 and fetch_threads() == []


def test_one_request_in_flight_is_a_plain_loop_in_the_callers_thread() -> None:
    fake, ids = world(30, 7)
    slow = Slow(fake, delay=0.0)
    client = client_for(slow)
    outcomes = fetch_outcomes(ids, client=client, concurrency=1)
    first = [next(outcomes) for _ in range(20)]
    assert fake.count("GET", "/v3/connections/") == 20  # nothing fetched ahead
    outcomes.close()
    client.http.close()
    assert [o.connection_id for o in first] == ids[:20]  # in order, one at a time
    assert set(slow.threads) == {threading.current_thread().name} and slow.peak == 1


def test_the_window_never_sends_more_than_it_may_have_in_flight_beyond_what_was_taken() -> None:
    fake, ids = world(40, 5)
    client = client_for(Slow(fake, delay=0.01))
    outcomes = fetch_outcomes(ids, client=client, concurrency=4)
    first = [next(outcomes) for _ in range(3)]
    outcomes.close()  # the caller stops early: what is in flight ends on its own, nothing more is sent
    assert fetch_threads(within=5) == []
    client.http.close()
    assert len(first) == 3 and fake.count("GET", "/v3/connections/") <= 3 + 4  # taken, and at most four in flight


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_fatal_answer_is_raised_and_nothing_more_is_sent(concurrency: int) -> None:
    fake, ids = world(30, 6)
    fake.fail_next(430, match=ids[5])
    client = client_for(Slow(fake, delay=0.002))
    with pytest.raises(FatalApiError):
        list(fetch_outcomes(ids, client=client, concurrency=concurrency))
    assert fetch_threads(within=5) == []  # the requests in flight ended on their own
    client.http.close()
    sent = fake.count("GET", "/v3/connections/")
    assert client.cancelled.is_set()
    assert sent == 6 if concurrency == 1 else 6 <= sent <= 6 + concurrency


def test_no_request_starts_once_the_pass_is_stopped() -> None:
    fake, ids = world(20, 8)
    client = client_for(Slow(fake, delay=0.0))
    client.cancelled.set()
    assert fetch_all(Slow(fake, delay=0.0), []) == []
    assert list(fetch_outcomes(ids, client=client, concurrency=1)) == []
    assert list(fetch_outcomes(ids, client=client, concurrency=4)) == []
    client.http.close()
    assert fake.count("GET", "/v3/connections/") == 0


def test_fetching_goes_on_while_the_caller_is_busy_up_to_the_window() -> None:
    fake, ids = world(40, 9)
    slow = Slow(fake, delay=0.01)
    client = client_for(slow)
    outcomes = fetch_outcomes(ids, client=client, concurrency=2, window=8)
    next(outcomes)  # then the caller stores a batch, and takes nothing for a while
    give_up = time.monotonic() + 5
    while fake.count("GET", "/v3/connections/") < 8 and time.monotonic() < give_up:
        time.sleep(0.01)
    time.sleep(0.05)
    assert fake.count("GET", "/v3/connections/") == 8  # a window's worth: the one taken, and seven more
    assert slow.peak == 2  # two in flight at a time
    outcomes.close()
    client.http.close()


# -- the listing's page read ahead (``etl.fetch.PageAhead``) -------------------------------------------------

class Held:
    """A MockTransport handler over a FakeApi noting which listing page is asked for on which thread, and
    when it is answered; page ``hold`` is answered only once ``release`` is set (or after 5 s)."""

    def __init__(self, fake: FakeApi, hold: int | None = None) -> None:
        self.fake, self.hold = fake, hold
        self.release = threading.Event()
        self.events: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        number = request.url.params["page[number]"]
        self.events.append(f"asked {number} on {threading.current_thread().name}")
        if number == str(self.hold):
            self.release.wait(5)
        response = self.fake.handle(request)
        self.events.append(f"answered {number}")
        return response

    def wait_for(self, event: str) -> None:
        give_up = time.monotonic() + 5
        while event not in self.events and time.monotonic() < give_up:
            time.sleep(0.005)
        assert event in self.events


def listing_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("listing")}


def test_the_page_read_ahead_is_read_on_the_listing_thread_and_taken_without_asking_again() -> None:
    fake, ids = world(5, 10)
    held = Held(fake)
    client = client_for(held)
    ahead = PageAhead(client, 2)
    ahead.fetch(2)
    page = ahead.take(2)
    ahead.close()
    client.http.close()
    assert page.number == 2 and page.ids == ids[2:4]
    assert held.events == ["asked 2 on listing_0", "answered 2"]


def page_three_behind_page_two(seed: int) -> tuple[list[str], Held, SmartcarClient, PageAhead,
                                                      set[threading.Thread]]:
    """Page 2 asked for and held unanswered, then page 3 wanted instead: (ids, the handler, the client, the
    read-ahead, the listing threads it started)."""
    fake, ids = world(7, seed)
    held = Held(fake, hold=2)
    client = client_for(held)
    before = listing_threads()
    ahead = PageAhead(client, 2)
    ahead.fetch(2)
    held.wait_for("asked 2 on listing_0")
    ahead.fetch(3)  # page 2 is not wanted any more, and still being read
    return ids, held, client, ahead, listing_threads() - before


def test_pages_read_ahead_are_read_one_at_a_time_on_one_thread() -> None:
    ids, held, client, ahead, threads = page_three_behind_page_two(11)
    assert len(threads) == 1  # no second thread for page 3
    held.release.set()
    page = ahead.take(3)
    ahead.close()
    client.http.close()
    assert page.ids == ids[4:6]
    assert held.events == ["asked 2 on listing_0", "answered 2", "asked 3 on listing_0", "answered 3"]


def test_closing_drops_the_pages_read_ahead_without_waiting_for_the_request_in_flight() -> None:
    ids, held, client, ahead, threads = page_three_behind_page_two(12)  # page 3 waits behind page 2
    ahead.close()
    assert held.events == ["asked 2 on listing_0"]  # close did not wait for page 2
    held.release.set()
    for thread in threads:
        thread.join(timeout=5)
    assert held.events == ["asked 2 on listing_0", "answered 2"]  # page 3 was never asked for
    assert ahead.take(2).ids == ids[2:4]  # a page dropped is read again, now, if it is wanted after all
    client.http.close()
    assert held.events[2:] == [f"asked 2 on {threading.current_thread().name}", "answered 2"]


def test_requests_are_sent_on_the_fetch_threads_and_these_end_with_the_fetching() -> None:
    fake, ids = world(12, 13)
    slow = Slow(fake, delay=0.02)
    outcomes = fetch_all(slow, ids, concurrency=3)
    assert len(outcomes) == 12 and slow.peak == 3
    assert set(slow.threads) == {"fetch_0", "fetch_1", "fetch_2"}
    assert fetch_threads() == []  # joined before fetch_outcomes ended, not left to end on their own


def test_a_caller_that_stops_does_not_wait_for_the_requests_in_flight() -> None:
    fake, ids = world(4, 14)
    asked, release = threading.Event(), threading.Event()
    answered: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(ids[1]):
            asked.set()
            release.wait(5)
        response = fake.handle(request)
        answered.append(request.url.path.rsplit("/", 1)[-1])
        return response

    client = client_for(handler)
    outcomes = fetch_outcomes(ids[:2], client=client, concurrency=2)
    assert next(outcomes).connection_id == ids[0] and asked.wait(5)
    outcomes.close()  # the caller stops while ids[1] is still being read
    assert answered == [ids[0]] and client.cancelled.is_set()
    release.set()
    assert fetch_threads(within=5) == []
    client.http.close()
    assert answered == [ids[0], ids[1]]  # the request in flight ended on its own


def test_a_retry_that_would_end_past_the_pass_is_postponed_with_its_id_time_and_error() -> None:
    import datetime as dt

    from etl.api.client import ClientOptions
    from etl.api.deadline import PassDeadline
    from etl.api.retry import RetryPolicy

    start, at = dt.datetime(2026, 3, 1, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, 0, 0, 5, tzinfo=dt.UTC)
    fake, ids = world(2, 29)
    fake.fail_next(503, headers={"Retry-After": "30"}, times=99)
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake.handle))
    deadline = PassDeadline(seconds=20, now=lambda: start, cap=1.0)  # 20 s left: too few for a wait of 30
    client = SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("t")), http=http,
                            retry=RetryPolicy(sleep=lambda _: None), options=ClientOptions(deadline=deadline))
    outcomes = list(fetch_outcomes(ids, client=client, concurrency=1, now=lambda: at))
    assert [(type(o), o.connection_id, o.observed_at) for o in outcomes] == [(Postponed, i, at) for i in ids]
    assert [(o.after.status, o.after.retry_after) for o in outcomes if isinstance(o, Postponed)] == [(503, 30.0)] * 2
