"""Monitoring: the gauge of permissions held, on SQLite, PostgreSQL and MariaDB, from synced data."""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from etl.context import Seams
from etl.db.models import connections
from etl.db.store import Store
from etl.fakeapi import FakeApi
from etl.metrics import PERMISSION_LABELS, Metrics
from etl.scheduler import Daemon
from tests.conftest import Clock, make_config
from tests.test_operations import tracked_world

GAUGE = "smartcar_etl_connections_with_permission"


def daemon(fake: FakeApi, engine: Engine, clock: Clock, metrics: Metrics) -> Daemon:
    """A daemon of application ``default`` on ``engine`` and the fake API, recording into ``metrics``."""
    return Daemon(make_config(fake, "unused"), Store(engine),
                  seams=Seams(metrics=metrics, transport=httpx.MockTransport(fake.handle), now=clock))


def exposition(metrics: Metrics) -> str:
    """The metrics as Prometheus scrapes them."""
    return generate_latest(metrics.registry).decode()


def held(metrics: Metrics, application: str = "default") -> dict[str, float]:
    """The permission gauge of ``application``, parsed back from the exposition text."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition(metrics)):
        for sample in family.samples:
            if sample.name == GAUGE and sample.labels["application"] == application:
                values[sample.labels["permission"]] = sample.value
    return values


def holders_per_permission(fake: FakeApi, ids: list[str] | None = None) -> Counter[str]:
    """What the API says: how many of its live connections (of ``ids``, default all) hold each permission."""
    return Counter(p for conn in fake.connections.values() if ids is None or conn.id in ids
                   for p in set(conn.permissions))


# -- the gauge of permissions held --------------------------------------------------------------------------------

def test_the_permission_gauge_counts_the_active_holders_and_a_permission_given_up_drops_to_0(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = tracked_world(fake_api, engine, 12)
    metrics = Metrics()
    assert held(metrics) == {}  # nothing known before a pass has read the database
    job = daemon(fake_api, engine, clock, metrics)
    assert job.run_pass() is not None
    first = holders_per_permission(fake_api)
    assert held(metrics) == first and sum(first.values()) > len(ids)

    given_up = first.most_common(1)[0][0]
    for conn in list(fake_api.connections.values()):
        if given_up in conn.permissions:
            fake_api.set_permissions(conn.id, [p for p in conn.permissions if p != given_up] or ["read_odometer"])
    gone = ids[-1]
    fake_api.remove(gone)  # a 404: deleted, its grants closed
    clock.now += dt.timedelta(days=1)  # every connection due again
    assert job.run_pass() is not None
    with engine.connect() as conn:
        assert conn.scalar(select(connections.c.status).where(connections.c.id == gone)) == "deleted"
    second = holders_per_permission(fake_api)
    assert given_up not in second and gone not in fake_api.connections
    assert held(metrics) == {**second, given_up: 0}


def test_the_permission_gauge_counts_only_its_applications_connections(
        fake_api: FakeApi, engine: Engine, clock: Clock) -> None:
    ids = tracked_world(fake_api, engine, 8)
    metrics = Metrics()
    assert daemon(fake_api, engine, clock, metrics).run_pass() is not None
    moved = ids[:3]
    assert Store(engine).scoped("other").move(moved) == (3, [])
    metrics.of("default").load_permissions(Store(engine).scoped("default"))
    metrics.of("other").load_permissions(Store(engine).scoped("other"))
    assert held(metrics, "other") == holders_per_permission(fake_api, moved)
    expected = holders_per_permission(fake_api, ids[3:])
    expected.update(dict.fromkeys(holders_per_permission(fake_api).keys() - expected.keys(), 0))
    assert held(metrics, "default") == expected


def test_the_permission_gauge_shows_the_most_held_permissions_and_warns_once_of_the_rest(
        fake_api: FakeApi, engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    names = [f"read_extra_{n:03d}" for n in range(PERMISSION_LABELS + 3)]
    store, metrics = Store(engine).scoped("default"), Metrics()
    job = daemon(fake_api, engine, clock, metrics)
    with caplog.at_level(logging.WARNING, logger="etl.metrics"):
        store.track([fake_api.add(permissions=names).id], at=clock())
        assert job.run_pass() is not None
        assert held(metrics) == dict.fromkeys(names[:PERMISSION_LABELS], 1)  # ties by name
        # Two more connections hold the last names: 21 are held by three, 30 by two, the other 52 by one,
        # and three of those, shown before, are pushed out: removed, for their count is no longer known.
        store.track([fake_api.add(permissions=names[-count:]).id for count in (51, 21)], at=clock())
        clock.now += dt.timedelta(days=1)
        assert job.run_pass() is not None
    counts = holders_per_permission(fake_api)
    most = dict(sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:PERMISSION_LABELS])
    assert held(metrics) == most and set(counts) - set(most) == {names[49], names[50], names[51]}
    warnings = [r.getMessage() for r in caplog.records if GAUGE in r.getMessage()]
    assert len(warnings) == 1 and f"hold {len(names)} permissions" in warnings[0]
    assert f"the {PERMISSION_LABELS} most held" in warnings[0]
    help_line = next(line for line in exposition(metrics).splitlines() if line.startswith(f"# HELP {GAUGE} "))
    assert f"{PERMISSION_LABELS} most held" in help_line and "rest are left out" in help_line


def test_every_run_status_and_connection_result_is_counted_from_0() -> None:
    """So increase() and rate() (and the alerts on them) see a counter's first count."""
    metrics = Metrics()
    metrics.of("fleet")
    zero = {(s.name, s.labels.get("status") or s.labels["result"]) for family in text_string_to_metric_families(
        exposition(metrics)) for s in family.samples if s.name in ("smartcar_etl_runs_total",
                                                                    "smartcar_etl_connections_total")
        and s.labels["application"] == "fleet" and s.value == 0}
    assert zero == {*(("smartcar_etl_runs_total", s) for s in ("succeeded", "partial", "failed", "aborted")),
                    *(("smartcar_etl_connections_total", r) for r in ("fetched", "changed", "deleted", "failed"))}
