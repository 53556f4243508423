"""A daemon runs for months: its passes must not leave memory behind.

Many passes of one ``Daemon`` in one process, on SQLite, against the FakeApi over MockTransport, a
schedule interval apart on an injected clock (as ``Runner`` does; no scheduler is started). Some passes
change a few permissions, the others change nothing. After a warm-up, the memory that Python keeps
(tracemalloc, after a garbage collection) may not grow by a kilobyte a pass.
"""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import Engine

from etl.context import Seams
from etl.db.dialects.sqlite import _utc_text as _sqlite_text
from etl.db.store import Store
from etl.fakeapi import PERMISSIONS, FakeApi
from etl.scheduler import Daemon
from tests.conftest import Clock, make_config

CONNECTIONS = 50
PASSES = 300
# Bounded caches fill in the first passes: SQLAlchemy's statements, and SQLite's timestamp text
# (``_sqlite_text``, 4096 entries: about 60 new ones a pass here, full after some 70 passes, its dict
# resized once more by the evictions some 20 passes later). Measured after that.
WARM_UP = 100
GROWTH_LIMIT = 1024  # bytes a pass, after the warm-up
EVERY = 25  # passes between two measurements (a full garbage collection each)


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def churn(fake: FakeApi, ids: list[str], rng: random.Random, number: int) -> None:
    """Grant or revoke one permission on each of ``number`` connections."""
    for connection_id in rng.sample(ids, number):
        held = fake.connections[connection_id].permissions
        permission = rng.choice(PERMISSIONS)
        fake.set_permissions(connection_id, [p for p in held if p != permission] if permission in held
                             else [*held, permission])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_daemon_passes_do_not_grow_memory(fake_api: FakeApi, engine: Engine, clock: Clock, traced: None,
                                          caplog: pytest.LogCaptureFixture) -> None:
    # pytest keeps every log record of a test for its report (a daemon's go to stderr and are gone): at INFO,
    # after an earlier test's setup_logging, the passes' records would be counted as the daemon's growth.
    caplog.set_level(logging.WARNING)
    ids = fake_api.populate(CONNECTIONS, seed=3)
    store = Store(engine)
    store.track(ids, at=clock())
    config = make_config(fake_api, engine.url.render_as_string(hide_password=False))
    daemon = Daemon(config, store, seams=Seams(transport=httpx.MockTransport(fake_api.handle),
                                               sleep=lambda seconds: None, now=clock))
    rng = random.Random(5)
    sizes: dict[int, int] = {}  # after pass N (a multiple of EVERY, past the warm-up): the traced bytes
    changed = quiet = 0
    for number in range(1, PASSES + 1):
        churn(fake_api, ids, rng, 2 if number % 2 else 0)  # every other pass changes nothing
        clock.advance(seconds=config.schedule.interval_seconds)
        result = daemon.run_pass()
        assert result is not None and result.status == "succeeded" and result.counts.fetched == CONNECTIONS
        changed += result.counts.changed
        quiet += result.counts.changed == 0
        fake_api.requests.clear()  # the fake's own request log is the test's, not the daemon's
        fake_api.request_times.clear()
        # The warm-up lasts until the timestamp cache is full too: what a measured pass adds to it, it evicts.
        warm = number >= WARM_UP and _sqlite_text.cache_info().currsize == _sqlite_text.cache_info().maxsize
        if warm and number % EVERY == 0:
            gc.collect()
            sizes[number] = tracemalloc.get_traced_memory()[0]
    assert changed >= PASSES and quiet == PASSES // 2  # half the passes changed two connections, half none
    first = min(sizes)
    assert PASSES - first >= 150, f"the warm-up took {first} passes"
    growth = (sizes[PASSES] - sizes[first]) / (PASSES - first)
    assert growth < GROWTH_LIMIT, f"{growth:.0f} bytes a pass after pass {first}: {sizes}"
