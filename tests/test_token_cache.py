"""Tokens: renewed at a margin that fits their lifetime, read once a request, kept across a daemon's passes."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import httpx
import pytest
from sqlalchemy import Engine

from etl.api.auth import ClientCredentials, StaticToken
from etl.api.client import ClientOptions, SmartcarClient
from etl.api.ratelimit import Patience, TokenBucket
from etl.api.retry import RetryPolicy
from etl.api.transport import make_http_client
from etl.config import Config, Secret
from etl.context import Seams
from etl.db.store import Store
from etl.errors import AuthenticationError
from etl.fakeapi import FakeApi
from etl.scheduler import Daemon
from etl.tracking import track
from tests.conftest import Clock, make_config

TOKEN = "/oauth2/token"


class Seconds:
    """A monotonic clock that moves only when told to, or when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def credentials_client(fake: FakeApi, clock: Seconds, *, limiter: TokenBucket | None = None,
                       ) -> tuple[SmartcarClient, ClientCredentials]:
    retry = RetryPolicy(sleep=clock.sleep, jitter=lambda: 1.0, clock=clock)
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake.handle))
    auth = ClientCredentials(http=http, token_url="https://auth.test/oauth2/token", client_id=fake.client_id,
                             client_secret=Secret(fake.client_secret), retry=retry, clock=clock)
    client = SmartcarClient(base_url="https://api.test/v3", auth=auth, http=http, retry=retry,
                            options=ClientOptions(limiter=limiter))
    return client, auth


# -- 9. a short token lifetime -------------------------------------------------------------------------------------

def test_a_30_second_token_serves_20_requests_with_one_token_request() -> None:
    clock = Seconds()
    fake = FakeApi(client_id="test-client", client_secret="s", token_ttl=30, clock=clock)
    conn = fake.add()
    client, _ = credentials_client(fake, clock)
    for _ in range(20):
        assert client.get_connection(conn.id) is not None
        clock.now += 0.5  # ten seconds in all: well within the token's life
    assert fake.count("POST", TOKEN) == 1 and fake.count("GET", "/v3/") == 20


@pytest.mark.parametrize(("lifetime", "still_used", "renewed"), [(30, 20.0, 29.0), (3600, 3530.0, 3545.0)])
def test_a_token_is_renewed_shortly_before_it_expires(lifetime: int, still_used: float, renewed: float) -> None:
    clock = Seconds()
    fake = FakeApi(client_id="test-client", client_secret="s", token_ttl=lifetime, clock=clock)
    _, auth = credentials_client(fake, clock)
    first = auth.token()
    clock.now += still_used
    assert auth.token() == first and fake.count("POST", TOKEN) == 1
    clock.now += renewed - still_used
    assert auth.token() != first and fake.count("POST", TOKEN) == 2


class CountingToken(StaticToken):
    """A ready token that counts how often it is read."""

    reads = 0

    def token(self) -> str:
        self.reads += 1
        return super().token()


def test_the_token_is_read_again_only_after_a_wait_for_the_rate_limit() -> None:
    clock = Seconds()
    fake = FakeApi(access_tokens=("ready",), clock=clock)
    conn = fake.add()
    auth = CountingToken(Secret("ready"))
    limiter = TokenBucket(capacity=2, per_second=1.0, clock=clock, sleep=clock.sleep)
    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(fake.handle))
    client = SmartcarClient(base_url="https://api.test/v3", auth=auth, http=http,
                            options=ClientOptions(limiter=limiter))
    client.get_connection(conn.id)
    client.get_connection(conn.id)
    assert (auth.reads, limiter.waited) == (2, 0.0)  # two tokens in the bucket: no wait, one read each
    client.get_connection(conn.id)
    assert auth.reads == 4 and limiter.waited == pytest.approx(1.0)  # it waited: read again after the wait


class CountingLimiter:
    """A limiter that never waits and counts the tokens taken."""

    waited = 0.0
    taken = 0

    def acquire(self, cancelled: threading.Event | None = None, patience: Patience | None = None) -> bool:
        self.taken += 1
        return True

    def drain(self, seconds: float) -> None:
        pass


def test_refused_credentials_take_none_of_the_rate_budget() -> None:
    clock = Seconds()
    fake = FakeApi(client_id="test-client", client_secret="s", clock=clock)
    conn = fake.add()
    client, _ = credentials_client(fake, clock)
    limiter = CountingLimiter()
    client.limiter = limiter
    fake.client_secret = "another"
    with pytest.raises(AuthenticationError, match="invalid_client"):
        client.get_connection(conn.id)
    assert limiter.taken == 0 and fake.count("GET", "/v3/") == 0


# -- 16. one token for the passes of a process ---------------------------------------------------------------------

def daemon(fake: FakeApi, engine: Engine, clock: Clock, config: Config | None = None) -> Daemon:
    config = config or make_config(fake, engine.url.render_as_string(hide_password=False))
    seams = Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda seconds: None, now=clock)
    return Daemon(config, Store(engine), seams=seams)


def a_pass(d: Daemon, clock: Clock) -> int | None:
    """A pass a schedule interval after the previous one: how many connections it fetched (None: it failed)."""
    clock.advance(minutes=20)
    result = d.run_pass()
    return None if result is None else result.counts.fetched


@pytest.fixture
def tracked(fake_api: FakeApi, engine: Engine, clock: Clock) -> list[str]:
    ids = fake_api.populate(3, seed=21)
    track(Store(engine), ids, now=clock)
    return ids


def test_the_passes_of_a_daemon_share_one_token(fake_api: FakeApi, engine: Engine, clock: Clock, tracked: list[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    d = daemon(fake_api, engine, clock)
    assert [a_pass(d, clock) for _ in range(4)] == [3, 3, 3, 3]
    assert fake_api.count("POST", TOKEN) == 1
    token = fake_api.issued_tokens[0]
    assert not any(token in record.getMessage() for record in caplog.records)  # kept, never logged


def test_a_pass_goes_on_with_the_kept_token_while_the_token_endpoint_is_down(
    fake_api: FakeApi, engine: Engine, clock: Clock, tracked: list[str]
) -> None:
    d = daemon(fake_api, engine, clock)
    assert a_pass(d, clock) == 3
    fake_api.fail_next(503, match=TOKEN, times=99)
    assert a_pass(d, clock) == 3
    assert fake_api.count("POST", TOKEN) == 1


def test_a_refused_token_is_forgotten_even_when_no_new_one_comes(
    fake_api: FakeApi, engine: Engine, clock: Clock, tracked: list[str]
) -> None:
    sent: list[str] = []
    fake_api.hooks.append(lambda request: sent.append(request.headers.get("authorization", "")))
    config = make_config(fake_api, engine.url.render_as_string(hide_password=False), concurrency=1)
    d = daemon(fake_api, engine, clock, config)  # one request at a time: the one 401 renews, and fails
    assert a_pass(d, clock) == 3
    fake_api.expire_tokens()  # the API refuses the kept token from now on
    fake_api.fail_next(503, match=TOKEN, times=5)  # and the token endpoint is down for the next pass
    assert a_pass(d, clock) is None
    del sent[:]
    assert a_pass(d, clock) == 3
    assert len(fake_api.issued_tokens) == 2
    assert set(sent) == {"", f"Bearer {fake_api.issued_tokens[1]}"}  # the token request, then the new token only


def test_another_client_secret_gets_its_own_token(
    fake_api: FakeApi, engine: Engine, clock: Clock, tracked: list[str]
) -> None:
    good = daemon(fake_api, engine, clock)
    assert a_pass(good, clock) == 3
    config = make_config(fake_api, engine.url.render_as_string(hide_password=False))
    wrong = replace(config, api=replace(config.api, client_secret=Secret("not-the-secret")))
    gets = fake_api.count("GET", "/v3/")
    assert a_pass(daemon(fake_api, engine, clock, wrong), clock) is None  # refused, not hidden by the kept token
    assert fake_api.count("GET", "/v3/") == gets


def test_a_refused_ready_token_stops_the_run_saying_what_to_set() -> None:
    with pytest.raises(AuthenticationError) as caught:
        StaticToken(Secret("ready")).renew("ready")
    assert caught.value.path == "(access token)" and caught.value.status == 401
    assert caught.value.detail == ("the ready access token was refused and cannot be renewed "
                                   "(set a new SMARTCAR_ACCESS_TOKEN, or client credentials)")


def test_a_renewal_with_nothing_kept_fetches_a_token() -> None:
    clock = Seconds()
    fake = FakeApi(client_id="test-client", client_secret="s", clock=clock)
    _, auth = credentials_client(fake, clock)
    assert auth.renew("refused-by-an-earlier-process") == fake.issued_tokens[0]
