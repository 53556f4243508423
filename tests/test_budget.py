"""One rate budget per application, kept in the database: every process draws from it.

The fake API enforces a bucket equal to the configured one, and the job and the
fake run on one injected clock (``SharedTime``): no test waits for real, and no
test asserts a wall time.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import replace
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from etl.backfill import Source, backfill
from etl.config import Config, RateLimitConfig
from etl.context import Seams, budget_key
from etl.db.models import backfills, connections, sync_runs
from etl.db.store import Bucket, Store
from etl.fakeapi import FakeApi
from etl.metrics import Metrics
from etl.sync import RunResult, sync
from etl.tracking import track
from tests.conftest import T0, make_config


class SharedTime:
    """One fake clock for the job (``now``, ``sleep``) and the fake API (``monotonic``); thread-safe."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self.seconds

    def now(self) -> dt.datetime:
        with self._lock:
            return T0 + dt.timedelta(seconds=self.seconds)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds


CAPACITY, PER_MINUTE = 5, 60.0  # a small bucket: 5 requests, refilled at 1 a second


def make_world(
    engine: Engine, count: int, *, seed: int, bucket: tuple[int, float] = (CAPACITY, PER_MINUTE)
) -> tuple[FakeApi, SharedTime, Config, list[str]]:
    """``count`` tracked connections, and a fake API whose bucket (capacity, per minute) is the job's own."""
    time = SharedTime()
    fake = FakeApi(client_id="test-client", client_secret="test-client-secret", clock=time.monotonic,
                   rate_limit=(bucket[0], bucket[1] / 60))
    ids = fake.populate(count, seed=seed)
    track(Store(engine), ids, now=time.now)
    config = make_config(fake, engine.url.render_as_string(hide_password=False))
    config = replace(config, rate_limit=RateLimitConfig(capacity=bucket[0], per_minute=bucket[1]))
    return fake, time, config, ids


@pytest.fixture
def world(engine: Engine) -> tuple[FakeApi, SharedTime, Config, list[str]]:
    return make_world(engine, 12, seed=5)


def _seams(fake: FakeApi, time: SharedTime, **more: Any) -> Seams:
    return Seams(transport=httpx.MockTransport(fake.handle), sleep=time.sleep, now=time.now, **more)


def test_a_lease_never_grants_more_than_the_bucket_holds(engine: Engine) -> None:
    store = Store(engine)
    bucket = Bucket(capacity=3.0, per_second=0.5)
    first = store.lease_tokens("k", want=10, bucket=bucket, at=T0)
    again = store.lease_tokens("k", want=10, bucket=bucket, at=T0)
    assert (first.granted, again.granted, again.wait) == (3, 0, 2.0)
    later = store.lease_tokens("k", want=10, bucket=bucket, at=T0 + dt.timedelta(seconds=5))
    assert later.granted == 2 and later.tokens == pytest.approx(0.5)
    idle = store.lease_tokens("k", want=1, bucket=bucket, at=T0 + dt.timedelta(hours=1))
    assert idle.granted == 1 and idle.tokens == 2.0  # refilled to capacity, never beyond
    assert store.lease_tokens("other", want=1, bucket=bucket, at=T0).granted == 1  # buckets are per key


def test_the_configuration_updates_the_bucket_and_a_429_empties_it(engine: Engine) -> None:
    store = Store(engine)
    store.lease_tokens("k", want=1, bucket=Bucket(capacity=10.0, per_second=1.0), at=T0)
    smaller = store.lease_tokens("k", want=100, bucket=Bucket(capacity=4.0, per_second=2.0), at=T0)
    assert smaller.granted == 4 and store.budget("k").capacity == 4.0 and store.budget("k").per_second == 2.0
    store.drain_tokens("k", seconds=2, at=T0)  # -4 tokens: as deep as a bucket of 4 goes (-capacity)
    blocked = store.lease_tokens("k", want=1, bucket=Bucket(capacity=4.0, per_second=2.0),
                                 at=T0 + dt.timedelta(seconds=1))
    assert blocked.granted == 0 and blocked.wait == pytest.approx(1.5)  # 2 s of backing off, then one token
    assert store.lease_tokens("k", want=1, bucket=Bucket(capacity=4.0, per_second=2.0),
                              at=T0 + dt.timedelta(seconds=3)).granted == 1


def _sync(config: Config, engine: Engine, seams: Seams, **kwargs: Any) -> RunResult:
    return sync(config, Store(engine), seams=seams, **kwargs)


def test_runs_that_follow_each_other_stay_under_the_bucket_together(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    first = _sync(config, engine, _seams(fake, time), ignore_due=True)
    started_second = time.seconds
    second = _sync(config, engine, _seams(fake, time), ignore_due=True)  # a new process: a new client
    assert (first.counts.fetched, second.counts.fetched) == (12, 12) and fake.rate_limited == 0
    # The second run found the bucket as the first left it (empty), not full: it waited for each token.
    assert time.seconds - started_second >= 11
    assert second.rate_limit_wait >= 11 and first.rate_limit_wait < second.rate_limit_wait
    assert Store(engine).budget(budget_key(config)) is not None
    with engine.connect() as conn:  # the wait is recorded with the run (wall time: one thread waits at a time)
        waits = list(conn.scalars(select(sync_runs.c.rate_limit_wait_seconds).order_by(sync_runs.c.id)))
    assert waits == pytest.approx([first.rate_limit_wait, second.rate_limit_wait])
    assert second.rate_limit_wait <= time.seconds - started_second


def test_a_backfill_right_after_a_sync_gets_no_429(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    assert _sync(config, engine, _seams(fake, time), ignore_due=True).counts.fetched == 12
    result = backfill(config, Store(engine), Source(name="ids", ids=ids), seams=_seams(fake, time))
    assert result.counts.fetched == 12 and fake.rate_limited == 0


def test_a_daemon_restarted_mid_pass_gets_no_429(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    cancelled = threading.Event()
    fetched: list[str] = []
    fake.hooks.append(lambda request: fetched.append(request.url.path) if len(fetched) < 4 else cancelled.set())
    stopped = _sync(config, engine, _seams(fake, time, cancelled=cancelled), ignore_due=True, trigger="daemon")
    assert stopped.status == "aborted" and stopped.counts.fetched < 12
    restarted = _sync(config, engine, _seams(fake, time), trigger="daemon")
    assert stopped.counts.fetched + restarted.counts.fetched >= 12 and fake.rate_limited == 0


def test_a_429_makes_every_process_back_off(engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
                                            ) -> None:
    fake, time, config, ids = world
    fake.fail_next(429, headers={"Retry-After": "20"}, match="/v3/connections/")
    result = _sync(config, engine, _seams(fake, time), ignore_due=True)
    assert result.counts.fetched == 12
    budget = Store(engine).budget(budget_key(config))
    assert budget is not None and time.seconds >= 20  # the run waited out the Retry-After


def test_back_to_back_passes_that_fit_their_time_share_the_budget_fairly(engine: Engine) -> None:
    """More due connections than the budget allows: three passes of 10 s each, one after another."""
    fake, time, config, ids = make_world(engine, 60, seed=6)
    config = replace(config, sync=replace(config.sync, max_duration_seconds=10.0))
    results, spans = [], []
    metrics = Metrics()
    for _ in range(3):
        started = time.seconds
        results.append(_sync(config, engine, _seams(fake, time, metrics=metrics)))
        spans.append(time.seconds - started)
    assert metrics.deferred.labels("default")._value.get() == sum(r.deferred for r in results) > 0
    assert [r.exit_code for r in results] == [0, 0, 0] and fake.rate_limited == 0
    assert all(span <= 10.0 for span in spans), spans  # each within its max duration
    fetched = [path.rsplit("/", 1)[1] for method, path in fake.requests if path.startswith("/v3/connections/")]
    assert len(fetched) == len(set(fetched)) < len(ids)  # none twice while others were never fetched
    allowed = CAPACITY + time.seconds * PER_MINUTE / 60
    assert len(fetched) >= 0.85 * allowed, (len(fetched), allowed)
    assert [r.deferred for r in results] == [60 - r.counts.fetched - sum(p.counts.fetched for p in results[:i])
                                             for i, r in enumerate(results)]


def test_a_backfill_with_a_max_duration_stops_in_time_and_resume_finishes_it(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    limited = replace(config, sync=replace(config.sync, max_duration_seconds=5.0))
    first = backfill(limited, Store(engine), Source(name="ids", ids=ids), seams=_seams(fake, time))
    assert first.exit_code == 0 and 0 < first.counts.fetched < 12 and first.deferred == 12 - first.counts.fetched
    assert time.seconds <= 5.0
    rest = backfill(config, Store(engine), Source(name="ids", ids=ids), resume=True, seams=_seams(fake, time))
    assert first.counts.fetched + rest.counts.fetched == 12 and rest.deferred == 0 and fake.rate_limited == 0
    fetched = [path for method, path in fake.requests if path.startswith("/v3/connections/")]
    assert len(fetched) == len(set(fetched)) == 12


def test_a_listing_out_of_time_resumes_at_its_page_and_only_a_whole_listing_deletes(engine: Engine) -> None:
    fake, time, config, ids = make_world(engine, 250, seed=7, bucket=(2, 6))  # a page now, then one every 10 s
    unknown = "00000000-0000-4000-8000-0000000000ab"  # tracked, but the API does not list it
    track(Store(engine), [unknown], now=time.now)
    config = replace(config, sync=replace(config.sync, strategy="list", max_duration_seconds=15.0))
    first = _sync(config, engine, _seams(fake, time))
    assert (first.exit_code, first.status, first.counts.fetched, first.counts.deleted) == (0, "succeeded", 200, 0)
    assert first.deferred == 50  # the last page, from totalCount
    with engine.connect() as conn:
        place = conn.execute(select(backfills.c.fingerprint, backfills.c.next_page, backfills.c.status)).one()
        assert tuple(place) == ("sync-listing", 3, "running")
        assert conn.scalar(select(connections.c.status).where(connections.c.id == unknown)) == "pending"
    second = _sync(config, engine, _seams(fake, time))  # page 3, then no time left to confirm the unknown one
    pages = [path for method, path in fake.requests if path == "/v3/connections"]
    assert len(pages) == 3 and second.counts.fetched == 50 and second.counts.deleted == 0  # resumed at page 3
    with engine.connect() as conn:
        assert tuple(conn.execute(select(backfills.c.next_page, backfills.c.status)).one()) == (3, "running")
    longer = replace(config, sync=replace(config.sync, max_duration_seconds=30.0))
    third = _sync(longer, engine, _seams(fake, time))  # page 3 again, and the confirmation: a 404
    assert third.counts.deleted == 1 and third.exit_code == 0
    with engine.connect() as conn:
        assert conn.scalar(select(backfills.c.status)) == "done"
        assert conn.scalar(select(connections.c.status).where(connections.c.id == unknown)) == "deleted"
    assert fake.rate_limited == 0


def test_auto_sends_no_probe_when_no_request_fits_the_pass(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    config = replace(config, sync=replace(config.sync, strategy="auto", max_duration_seconds=0.5))
    Store(engine).lease_tokens(budget_key(config), want=1, bucket=Bucket(3.9, 1.0), at=time.now())
    Store(engine).drain_tokens(budget_key(config), seconds=100, at=time.now())  # as after a 429
    result = _sync(config, engine, _seams(fake, time))
    assert fake.count("GET", "/v3/connections") == 0  # neither the probe of page 1 nor any GET
    assert (result.exit_code, result.deferred, result.requests) == (0, 12, 0)


def test_a_probe_out_of_time_defers_the_pass_instead_of_failing_it(
    engine: Engine, world: tuple[FakeApi, SharedTime, Config, list[str]]
) -> None:
    fake, time, config, ids = world
    config = replace(config, sync=replace(config.sync, strategy="auto", max_duration_seconds=0.5))
    result = _sync(config, engine, _seams(fake, time))  # tokens to spare, but no time for an answer
    assert (result.exit_code, result.status, result.deferred, result.requests) == (0, "succeeded", 12, 0)


def test_a_pass_takes_the_schedule_as_its_default_max_duration() -> None:
    from etl.config import ScheduleConfig
    from etl.sync import default_max_duration

    assert default_max_duration(Config(schedule=ScheduleConfig(interval_seconds=900)), lambda: T0) == 900
    cron = Config(schedule=ScheduleConfig(cron="*/15 * * * *"))
    at = T0 + dt.timedelta(minutes=4, seconds=30)  # 12:04:30: the next firing is 12:15
    assert default_max_duration(cron, lambda: at) == 630
