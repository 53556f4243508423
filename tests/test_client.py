"""The API client against the fake API over MockTransport: every row of the response table."""

from __future__ import annotations

import datetime as dt
import email.utils

import httpx
import pytest

from etl.api.answers import classify, error_info
from etl.api.auth import ClientCredentials, StaticToken
from etl.api.client import ClientOptions, SmartcarClient
from etl.api.retry import RetryPolicy
from etl.api.transport import make_http_client
from etl.config import Secret
from etl.errors import (
    ApiError,
    AuthenticationError,
    FatalApiError,
    MalformedDocumentError,
    RetriableApiError,
)
from etl.fakeapi import BREAKAGES, FakeApi

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class Harness:
    def __init__(self, fake: FakeApi, *, static: str | None = None, attempts: int = 5) -> None:
        self.fake = fake
        self.sleeps: list[float] = []
        self.monotonic = 1000.0
        retry = RetryPolicy(max_attempts=attempts, initial_backoff=1.0, max_backoff=8.0,
                            max_retry_after=30.0, sleep=self.sleeps.append, jitter=lambda: 1.0)
        http = make_http_client(timeout=5, concurrency=2, transport=httpx.MockTransport(fake.handle))
        self.auth = StaticToken(Secret(static)) if static else ClientCredentials(
            http=http, token_url="https://auth.test/oauth2/token", client_id=fake.client_id,
            client_secret=Secret(fake.client_secret), retry=retry, clock=lambda: self.monotonic)
        self.client = SmartcarClient(base_url="https://api.test/v3", auth=self.auth, http=http,
                                     retry=retry, options=ClientOptions(now=lambda: NOW))

    def gets(self, cid: str) -> int:
        return self.fake.count("GET", f"/v3/connections/{cid}")


@pytest.fixture
def h(fake_api: FakeApi) -> Harness:
    return Harness(fake_api)


def test_200_is_parsed_into_a_record(h: Harness) -> None:
    conn = h.fake.add(permissions=["read_odometer", "read_vin", "read_odometer"])
    record = h.client.get_connection(conn.id)
    assert record is not None
    assert record.permissions == {"read_odometer", "read_vin"}
    assert (record.user_id, record.vehicle_id) == (conn.user_id, conn.vehicle_id)
    assert h.sleeps == []


def test_404_is_an_answer_fetched_once(h: Harness) -> None:
    missing = "00000000-0000-4000-8000-000000000001"
    assert h.client.get_connection(missing) is None
    assert h.gets(missing) == 1 and h.sleeps == []


@pytest.mark.parametrize("retry_after, expected", [("2", 2.0), ("120", 30.0), (None, 1.0)])
def test_429_waits_for_retry_after_capped(h: Harness, retry_after: str | None, expected: float) -> None:
    conn = h.fake.add()
    h.fake.fail_next(429, headers={"Retry-After": retry_after} if retry_after else {})
    assert h.client.get_connection(conn.id) is not None
    assert h.sleeps == [expected] and h.gets(conn.id) == 2


def test_429_retry_after_as_http_date(h: Harness) -> None:
    conn = h.fake.add()
    when = email.utils.format_datetime(NOW + dt.timedelta(seconds=7), usegmt=True)
    h.fake.fail_next(429, headers={"Retry-After": when})
    assert h.client.get_connection(conn.id) is not None
    assert h.sleeps == [7.0]


@pytest.mark.parametrize("fault", [
    {"status": 500}, {"status": 502, "shape": "html"}, {"status": 503, "shape": "v2"},
    {"error": "timeout"}, {"error": "connect"},
])
def test_transient_failures_retry_with_growing_backoff(h: Harness, fault: dict[str, object]) -> None:
    conn = h.fake.add()
    h.fake.fail_next(times=3, **fault)  # type: ignore[arg-type]
    assert h.client.get_connection(conn.id) is not None
    assert h.sleeps == [1.0, 2.0, 4.0] and h.gets(conn.id) == 4


def test_retries_stop_at_the_cap_and_raise_the_last_error(h: Harness) -> None:
    conn = h.fake.add()
    h.fake.fail_next(503, times=99)
    with pytest.raises(RetriableApiError) as caught:
        h.client.get_connection(conn.id)
    assert caught.value.status == 503
    assert h.gets(conn.id) == 5 and h.sleeps == [1.0, 2.0, 4.0, 8.0]


def test_401_renews_the_token_once_and_retries(h: Harness) -> None:
    conn = h.fake.add()
    assert h.client.get_connection(conn.id) is not None
    h.fake.expire_tokens()
    assert h.client.get_connection(conn.id) is not None
    assert h.fake.count("POST", "/oauth2/token") == 2 and h.gets(conn.id) == 3


def test_second_401_after_renewal_is_fatal(h: Harness) -> None:
    conn = h.fake.add()
    h.fake.fail_next(401, match="/v3/", times=2)
    with pytest.raises(AuthenticationError, match="refused again after renewing"):
        h.client.get_connection(conn.id)
    assert h.gets(conn.id) == 2


def test_ready_token_refused_cannot_be_renewed(fake_api: FakeApi) -> None:
    h = Harness(fake_api, static="not-a-valid-token")
    conn = fake_api.add()
    with pytest.raises(AuthenticationError, match="cannot be renewed"):
        h.client.get_connection(conn.id)
    assert h.gets(conn.id) == 1 and fake_api.count("POST", "/oauth2/token") == 0


def test_ready_token_is_used_as_bearer(fake_api: FakeApi) -> None:
    fake = FakeApi(access_tokens=("ready-token",))
    h = Harness(fake, static="ready-token")
    assert h.client.get_connection(fake.add().id) is not None
    assert fake.count("POST", "/oauth2/token") == 0


@pytest.mark.parametrize("status, kind", [(403, "forbidden"), (430, "billing")])
def test_403_and_430_are_fatal_and_not_retried(h: Harness, status: int, kind: str) -> None:
    conn = h.fake.add()
    h.fake.fail_next(status, match="/v3/")
    with pytest.raises(FatalApiError) as caught:
        h.client.get_connection(conn.id)
    assert (caught.value.status, caught.value.kind) == (status, kind)
    assert caught.value.exit_code == 3 and h.gets(conn.id) == 1


def test_other_4xx_fails_that_request_only(h: Harness) -> None:
    conn = h.fake.add()
    h.fake.fail_next(400, match="/v3/")
    with pytest.raises(ApiError) as caught:
        h.client.get_connection(conn.id)
    assert not isinstance(caught.value, RetriableApiError | FatalApiError)
    assert (caught.value.path, caught.value.status) == (f"/connections/{conn.id}", 400)
    assert h.gets(conn.id) == 1 and h.sleeps == []
    assert h.client.get_connection(conn.id) is not None


def test_token_is_cached_and_renewed_before_expiry(h: Harness) -> None:
    conn = h.fake.add()
    for _ in range(3):
        h.client.get_connection(conn.id)
    assert h.fake.count("POST", "/oauth2/token") == 1
    h.monotonic += 3600 - 30  # within the renewal margin of the 1-hour token
    h.client.get_connection(conn.id)
    assert h.fake.count("POST", "/oauth2/token") == 2


def test_wrong_client_secret_is_an_authentication_error(fake_api: FakeApi) -> None:
    h = Harness(fake_api)
    fake_api.client_secret = "the-server-expects-another-secret"
    with pytest.raises(AuthenticationError) as caught:
        h.client.get_connection(fake_api.add().id)
    assert caught.value.status == 401 and caught.value.code == "invalid_client"
    assert h.fake.count("GET", "/v3/") == 0


def test_token_endpoint_down_is_an_authentication_error_after_retries(h: Harness) -> None:
    h.fake.fail_next(503, match="/oauth2/token", times=99)
    with pytest.raises(AuthenticationError, match="token endpoint unavailable after 5 attempts"):
        h.client.get_connection(h.fake.add().id)
    assert h.fake.count("POST", "/oauth2/token") == 5


@pytest.mark.parametrize("broken", BREAKAGES)
def test_malformed_documents_are_refused(h: Harness, broken: str) -> None:
    conn = h.fake.add()
    conn.broken = broken
    with pytest.raises(MalformedDocumentError) as caught:
        h.client.get_connection(conn.id)
    assert caught.value.kind == "malformed" and h.gets(conn.id) == 1


@pytest.mark.parametrize("shape, code, detail", [
    ("v3", "service_unavailable", "Scripted failure."),
    ("v2", "SERVICE_UNAVAILABLE:FAKE", "Scripted failure."),
    ("html", None, "HTML page: 503 Service Unavailable"),
    ("text", None, "503 Service Unavailable"),
    ("malformed_json", None, '{"errors": ['),
])
def test_error_bodies_in_every_shape(fake_api: FakeApi, shape: str, code: str | None, detail: str) -> None:
    response = fake_api.error(503, shape=shape)
    assert error_info(response) == (code, detail)
    with pytest.raises(RetriableApiError) as caught:
        classify(response, path="/connections/x")
    assert caught.value.status == 503
    assert "HTTP 503 Service Unavailable" in str(caught.value) and detail in str(caught.value)


def test_concurrent_renewal_fetches_one_token(h: Harness) -> None:
    first = h.auth.token()
    assert h.auth.renew(first) != first
    assert h.auth.renew(first) != first  # a second thread asking with the same stale token
    assert h.fake.count("POST", "/oauth2/token") == 2


def loopback_client(base_url: str, token_url: str, fake: FakeApi, sleeps: list[float]) -> SmartcarClient:
    retry = RetryPolicy(max_attempts=3, initial_backoff=1.0, sleep=sleeps.append, jitter=lambda: 1.0)
    http = make_http_client(timeout=0.3, concurrency=2)
    auth = ClientCredentials(http=http, token_url=token_url, client_id=fake.client_id,
                             client_secret=Secret(fake.client_secret), retry=retry)
    return SmartcarClient(base_url=base_url, auth=auth, http=http, retry=retry)


def test_a_real_timeout_on_loopback_is_retried(fake_api: FakeApi, api_server: dict[str, str]) -> None:
    conn = fake_api.add()
    fake_api.fail_next(None, delay=1.0, match=conn.id)  # answers only after the client's 0.3 s timeout
    sleeps: list[float] = []
    client = loopback_client(api_server["base_url"], api_server["token_url"], fake_api, sleeps)
    try:
        assert client.get_connection(conn.id) is not None
    finally:
        client.http.close()
    assert sleeps == [1.0] and fake_api.count("GET", f"/v3/connections/{conn.id}") == 2


def test_connection_refused_is_a_network_error_after_retries(fake_api: FakeApi) -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps: list[float] = []
    client = loopback_client(f"http://127.0.0.1:{port}/v3", f"http://127.0.0.1:{port}/oauth2/token",
                             fake_api, sleeps)
    try:
        with pytest.raises(AuthenticationError, match="token endpoint unavailable after 3 attempts \\(network\\)"):
            client.get_connection("00000000-0000-4000-8000-000000000001")
    finally:
        client.http.close()
    assert sleeps == [1.0, 2.0]


def test_every_request_is_reported_with_its_outcome_and_status(h: Harness) -> None:
    calls: list[tuple[str, int | None]] = []
    client = SmartcarClient(base_url="https://api.test/v3", auth=h.auth, http=h.client.http, retry=h.client.retry,
                            options=ClientOptions(now=lambda: NOW, on_request=lambda *call: calls.append(call)))
    (cid,) = h.fake.populate(1, seed=21)
    h.fake.fail_next(503)
    h.fake.fail_next(429, headers={"Retry-After": "1"}, code="VEHICLE")
    assert client.get_connection(cid) is not None
    h.fake.fail_next(404, shape="html")
    with pytest.raises(ApiError):
        client.get_connection(cid)
    h.fake.remove(cid)
    assert client.get_connection(cid) is None
    assert calls == [("server", 503), ("vehicle_limit", 429), ("ok", 200), ("unrecognised_404", 404),
                     ("not_found", 404)]


def test_a_listing_page_is_the_page_asked_for(h: Harness) -> None:
    ids = h.fake.populate(5, seed=22)
    listed = h.client.list_page(2, 2)
    assert listed.number == 2 and listed.ids == ids[2:4]


def test_a_200_that_is_not_json_is_a_malformed_document_of_its_path(h: Harness) -> None:
    from etl.api.documents import decode_json

    conn = h.fake.add()
    conn.broken = "not_json"
    with pytest.raises(MalformedDocumentError) as caught:
        h.client.get_connection(conn.id)
    with pytest.raises(ValueError) as why:
        decode_json(h.fake.handle(httpx.Request("GET", f"https://api.test/v3/connections/{conn.id}",
                                                headers={"Authorization": f"Bearer {h.auth.token()}"})).content)
    assert str(caught.value) == f"malformed HTTP 200 on /connections/{conn.id}: {why.value}"
    assert (caught.value.path, caught.value.status) == (f"/connections/{conn.id}", 200)


def test_a_document_of_another_connection_is_refused_naming_the_path(h: Harness) -> None:
    conn = h.fake.add()
    conn.broken = "wrong_id"
    with pytest.raises(MalformedDocumentError) as caught:
        h.client.get_connection(conn.id)
    assert caught.value.path == f"/connections/{conn.id}"
    assert caught.value.detail is not None and "not the id that was asked for" in caught.value.detail


def test_no_request_may_start_once_the_pass_is_stopped_or_out_of_time(h: Harness) -> None:
    from etl.api.deadline import PassDeadline

    assert h.client.may_send()
    h.client.cancelled.set()
    assert not h.client.may_send()
    h.client.cancelled.clear()
    h.client.deadline = PassDeadline(seconds=60, now=lambda: NOW, cap=5.0)
    assert h.client.may_send()
    h.client.deadline = PassDeadline(seconds=0.5, now=lambda: NOW, cap=5.0)  # no answer comes that fast
    assert not h.client.may_send()


def test_a_second_401_names_the_path_and_what_the_api_said(h: Harness) -> None:
    conn = h.fake.add()
    h.fake.fail_next(401, match="/v3/", times=2)
    with pytest.raises(AuthenticationError) as caught:
        h.client.get_connection(conn.id)
    error = caught.value
    assert (error.path, error.status, error.reason, error.code, error.detail) == (
        f"/connections/{conn.id}", 401, "Unauthorized", "unauthorized", "refused again after renewing the token")


def test_a_base_url_with_a_trailing_slash_makes_the_same_paths(fake_api: FakeApi) -> None:
    (cid,) = fake_api.populate(1, seed=23)
    h = Harness(fake_api)
    client = SmartcarClient(base_url="https://api.test/v3/", auth=h.auth, http=h.client.http, retry=h.client.retry)
    assert client.base_url == "https://api.test/v3"
    assert SmartcarClient(base_url="https://api.test/X", auth=h.auth, http=h.client.http).base_url == (
        "https://api.test/X")  # only slashes are taken off
    assert client.get_connection(cid) is not None and h.gets(cid) == 1


class Attempts:
    """A client over a FakeApi noting each request's read timeout; its retry clock jumps after the first reading."""

    def __init__(self, jump: float = 0.0) -> None:
        self.fake = FakeApi(access_tokens=("t",))
        (self.cid,) = self.fake.populate(1, seed=24)
        self.read_timeouts: list[float] = []
        self.readings = 0
        self.jump = jump

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.read_timeouts.append(request.extensions["timeout"]["read"])
        return self.fake.handle(request)

    def clock(self) -> float:
        self.readings += 1
        return 100.0 if self.readings == 1 else 100.0 + self.jump

    def client(self, *, request_deadline: float, pass_seconds: float | None = None) -> SmartcarClient:
        from etl.api.deadline import PassDeadline
        from etl.api.transport import ReadLimits

        http = make_http_client(timeout=60, concurrency=1, transport=httpx.MockTransport(self.handle))
        deadline = None if pass_seconds is None else PassDeadline(seconds=pass_seconds, now=lambda: NOW, cap=0.1)
        return SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("t")), http=http,
                              retry=RetryPolicy(max_attempts=1, deadline=40.0, clock=self.clock),
                              options=ClientOptions(now=lambda: NOW, limits=ReadLimits(deadline=request_deadline),
                                                    deadline=deadline))


@pytest.mark.parametrize("request_deadline, pass_seconds, read", [
    (30.0, None, 30.0),  # the request's own deadline
    (3.0, 50.0, 3.0),  # the request's, shorter than the pass's and the retries'
    (30.0, 2.0, 2.0),  # what is left of the pass
    (30.0, 0.5, 0.5),  # however little, while the pass allows a request
    (50.0, None, 40.0),  # what is left of the retries
])
def test_each_attempt_waits_no_longer_than_the_request_the_retries_and_the_pass_allow(
        request_deadline: float, pass_seconds: float | None, read: float) -> None:
    attempts = Attempts()
    assert attempts.client(request_deadline=request_deadline, pass_seconds=pass_seconds).get_connection(attempts.cid)
    assert attempts.read_timeouts == [read]


def test_no_attempt_is_sent_once_the_retry_deadline_has_passed() -> None:
    attempts = Attempts(jump=40.0)  # exactly the retry deadline
    with pytest.raises(RetriableApiError) as caught:
        attempts.client(request_deadline=30.0).get_connection(attempts.cid)
    assert str(caught.value) == f"timeout on /connections/{attempts.cid}: the retry deadline has passed"
    assert attempts.read_timeouts == []


def test_a_listing_page_asked_again_after_a_renewed_token_is_the_same_page(h: Harness) -> None:
    ids = h.fake.populate(5, seed=25)
    h.fake.fail_next(401, match="/v3/connections")
    listed = h.client.list_page(2, 2)
    assert listed.ids == ids[2:4] and h.fake.count("GET", "/v3/connections") == 2


def test_requests_sent_counts_from_zero(h: Harness) -> None:
    (cid,) = h.fake.populate(1, seed=26)
    assert h.client.requests_sent == 0
    h.client.get_connection(cid)
    assert h.client.requests_sent == 1


def test_one_retry_deadline_covers_the_attempts_before_and_after_a_renewed_token(fake_api: FakeApi) -> None:
    """A 503, a 401 (renewed), then 503s: the retries after the renewal have what is left of the same 10 s."""
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    retry = RetryPolicy(max_attempts=10, initial_backoff=4.0, max_backoff=4.0, sleep=sleep, jitter=lambda: 1.0,
                        deadline=10.0, clock=lambda: clock[0])
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake_api.handle))
    auth = ClientCredentials(http=http, token_url="https://auth.test/oauth2/token", client_id=fake_api.client_id,
                             client_secret=Secret(fake_api.client_secret), retry=retry, clock=lambda: clock[0])
    client = SmartcarClient(base_url="https://api.test/v3", auth=auth, http=http, retry=retry)
    (cid,) = fake_api.populate(1, seed=27)
    fake_api.fail_next(503, match="/v3/")
    fake_api.fail_next(401, match="/v3/")
    fake_api.fail_next(503, match="/v3/", times=99)
    with pytest.raises(RetriableApiError) as caught:
        client.get_connection(cid)
    # 0 s: 503, wait 4; 4 s: 401, renewed; 4 s: 503, wait 4; 8 s: 503, and a wait of 4 would pass 10 s.
    assert (caught.value.status, clock[0]) == (503, 8.0)
    assert fake_api.count("GET", f"/v3/connections/{cid}") == 4 and fake_api.count("POST", "/oauth2/token") == 2


def test_a_stop_while_waiting_for_the_rate_limit_is_a_cancel_and_sends_nothing() -> None:
    import threading

    from etl.api.deadline import Cancelled
    from etl.api.ratelimit import TokenBucket

    stop, clock = threading.Event(), [0.0]

    def sleep(seconds: float) -> None:  # the operator stops the pass half-way through the wait
        stop.set()
        clock[0] += seconds / 2

    bucket = TokenBucket(capacity=1, per_second=0.5, clock=lambda: clock[0], sleep=sleep)
    assert bucket.acquire()  # now empty: the next token in 2 s
    fake_api = FakeApi(access_tokens=("t",))
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake_api.handle))
    client = SmartcarClient(base_url="https://api.test/v3", auth=StaticToken(Secret("t")), http=http,
                            options=ClientOptions(cancelled=stop, limiter=bucket))
    (cid,) = fake_api.populate(1, seed=28)
    with pytest.raises(Cancelled) as caught:
        client.get_connection(cid)
    assert type(caught.value) is Cancelled  # not Deferred: the stop, not the pass's deadline, ended the wait
    assert clock[0] == 1.0 and client.requests_sent == 0 and fake_api.count("GET", f"/v3/connections/{cid}") == 0
