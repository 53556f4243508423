"""``doctor``: is this job ready to run? One check a line, each run even after another failed.

The checks, in order: the configuration; the database (reachable, migrated to the latest
revision); the token endpoint; one API request (a listing page of one); the machine's clock
against the API's ``Date``; the rate budget. The most severe exit code wins: 2 for configuration
(a schema not migrated included), 3 for credentials or an unreachable database or API. A skewed
clock or an empty budget is a warning, which does not change the code. Nothing secret is shown:
messages come from errors that already hide secrets, and URLs are shown without passwords.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from etl.clock import http_date, utcnow
from etl.config import Config, unknown_variables
from etl.errors import ApiError, ConfigError, EtlError

OK, WARNING, ERROR, SKIPPED = "ok", "warning", "error", "skipped"
MAX_SKEW = 60.0  # seconds the clock may differ from the API's
QUICK = 30.0  # seconds: doctor's bound on one request, and on one with its retry


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str
    detail: str
    exit_code: int = 0


@dataclass
class Diagnosis:
    """Every check, and the exit code the most severe one gives."""

    checks: list[Check] = field(default_factory=list)
    prefix: str = ""  # with several applications: the one whose checks are being added ("eu-west: ")

    @property
    def exit_code(self) -> int:
        return max((c.exit_code for c in self.checks), default=0)

    def as_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code,
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks]}

    def add(self, name: str, status: str, detail: str, exit_code: int = 0) -> None:
        self.checks.append(Check(self.prefix + name, status, detail, exit_code))


@dataclass
class _Probe:
    """What the checks learn and hand on: the config, the store, the API's answer."""

    config: Config | None = None
    store: Any = None  # a migrated Store, or None
    client: Any = None
    date: str | None = None  # the API's Date header
    answered: bool = False


def diagnose(load: Callable[[], Config], open_store: Callable[[], Any], *, seams: Any = None,
             env: Mapping[str, str] | None = None) -> Diagnosis:
    """Run every check; ``load`` gives the config (or raises ConfigError), ``open_store`` the Store."""
    from etl.context import Seams

    seams = seams or Seams()
    report, probe = Diagnosis(), _Probe()
    _configuration(report, probe, load, os.environ if env is None else env)
    _database(report, probe, open_store)
    names = probe.config.application_names() if probe.config is not None else [None]
    for name in names:  # each application: its token, one request, the clock, its budget
        own = probe if name is None else replace(
            probe, config=probe.config.for_application(name) if probe.config else None,
            store=probe.store.scoped(name) if probe.store is not None else None)
        report.prefix = f"{name}: " if len(names) > 1 else ""
        _token(report, own, seams)
        _request(report, own)
        _clock(report, own, seams.now)
        _budget(report, own, seams.now)
    report.prefix = ""
    return report


def _configuration(report: Diagnosis, probe: _Probe, load: Callable[[], Config], env: Mapping[str, str]) -> None:
    try:
        config = load()
    except ConfigError as error:  # several problems: one line, "; " between them
        report.add("configuration", ERROR, "; ".join(error.errors) + " (docs/configuration.md lists every key and "
                   "variable)", 2)
        return
    probe.config = config
    settings = sum(1 for source, _ in config.sources.values() if source == "environment")
    detail = f"{config.source}; {settings} setting(s) from the environment"
    unknown = unknown_variables(env)
    try:
        if not config.applications:  # each entry of a list has had its credentials checked
            config.api.require_credentials()
    except ConfigError as error:
        report.add("configuration", ERROR, str(error), 2)
        return
    notes = [*config.warnings, *([f"not settings, ignored: {', '.join(unknown)}"] if unknown else [])]
    if notes:  # an open secret file, a misspelt variable
        report.add("configuration", WARNING, "; ".join([detail, *notes]))
    else:
        report.add("configuration", OK, detail)


def _database(report: Diagnosis, probe: _Probe, open_store: Callable[[], Any]) -> None:
    if probe.config is None:
        report.add("database", SKIPPED, "needs a valid configuration")
        return
    from etl.db.engine import head_revision, safe_url

    where = safe_url(probe.config.database_url)
    try:
        store = open_store()
        current, head = store.current_revision(), head_revision()
    except EtlError as error:
        report.add("database", ERROR, str(error), error.exit_code)
        return
    if current != head:
        report.add("database", ERROR, f"{where} is at revision {current or 'none (empty)'}, the latest is {head}: "
                   "run `smartcar-etl db upgrade`", 2)
        return
    probe.store = store
    report.add("database", OK, f"{where}, revision {current} (the latest)")


def _quick(config: Config) -> Config:
    """The config with short bounds: doctor waits seconds, not the half hour a run may."""
    api = config.api
    return replace(config, api=replace(api, timeout_seconds=min(api.timeout_seconds, QUICK),
                                       request_deadline_seconds=min(api.request_deadline_seconds, QUICK),
                                       retry_deadline_seconds=min(api.retry_deadline_seconds, QUICK)),
                   retry=replace(config.retry, max_attempts=min(config.retry.max_attempts, 2),
                                 max_retry_after_seconds=min(config.retry.max_retry_after_seconds, 5)))


def _token(report: Diagnosis, probe: _Probe, seams: Any) -> None:
    config = probe.config
    if config is None or not ((config.api.client_id and config.api.client_secret) or config.api.access_token):
        report.add("token", SKIPPED, "needs credentials")
        return
    from etl.api.auth import StaticToken
    from etl.context import build_client

    client = build_client(_quick(config), replace(seams, limiter=_NoWait(probe)))
    if isinstance(client.auth, StaticToken):
        probe.client = client
        report.add("token", OK, "a ready token is set (SMARTCAR_ACCESS_TOKEN); the API request checks it")
        return
    try:
        client.auth.token()
    except EtlError as error:
        client.http.close()
        report.add("token", ERROR, f"{error}; check the client id and secret", 3)
        return
    probe.client = client
    report.add("token", OK, f"{config.api.token_url} gave a token")


class _NoWait:
    """The application's rate budget for doctor's one request: a token if one is there now, else no request."""

    waited = 0.0

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    def acquire(self, cancelled: Any = None, patience: Any = None) -> bool:
        if self.probe.store is None or self.probe.config is None:
            return True  # no database to keep the budget in: one request
        from etl.context import StoreLedger

        granted, _ = StoreLedger(self.probe.store, self.probe.config).lease(1)
        return granted > 0

    def drain(self, seconds: float) -> None:
        """A 429 during doctor's request: the next run finds out for itself."""


def _request(report: Diagnosis, probe: _Probe) -> None:
    client = probe.client
    if client is None:
        report.add("api request", SKIPPED, "needs a token")
        return
    from etl.api.deadline import Deferred
    from etl.api.listing import LISTING_PATH, listing_page

    try:
        response = client.get(LISTING_PATH, params={"page[number]": 1, "page[size]": 1})
        page = listing_page(1, response)
    except Deferred:
        report.add("api request", WARNING, "not sent: the rate budget is empty (see below)")
        return
    except EtlError as error:
        if isinstance(error, ApiError) and error.status == 429:  # reachable, and out of requests for now
            report.add("api request", WARNING, f"{error}: the application's rate limit is used up for now")
        else:
            report.add("api request", ERROR, str(error), 3)
        return
    finally:
        client.http.close()
    probe.date, probe.answered = response.headers.get("date"), True
    total = page.total_count
    report.add("api request", OK, f"GET {client.base_url}{LISTING_PATH} answered {response.status_code}"
               + (f"; the application has {total} connection(s)" if total is not None else ""))


def _clock(report: Diagnosis, probe: _Probe, now: Callable[[], dt.datetime] = utcnow) -> None:
    if not probe.answered:
        report.add("clock", SKIPPED, "needs an answer from the API")
        return
    theirs = http_date(probe.date)
    if theirs is None:
        report.add("clock", WARNING, f"the API's Date header is missing or unreadable: {probe.date!r:.60}")
        return
    skew = (now() - theirs).total_seconds()
    if abs(skew) > MAX_SKEW:
        report.add("clock", WARNING, f"this machine's clock is {abs(skew):.0f}s {'ahead of' if skew > 0 else 'behind'} "
                   "the API's: sync times would be off; run NTP (chrony, systemd-timesyncd)")
    else:
        report.add("clock", OK, f"within {MAX_SKEW:.0f}s of the API's ({skew:+.1f}s)")


def _budget(report: Diagnosis, probe: _Probe, now: Callable[[], dt.datetime] = utcnow) -> None:
    if probe.store is None or probe.config is None:
        report.add("rate budget", SKIPPED, "needs a migrated database")
        return
    from etl.backfill import human_duration
    from etl.status import budget

    state = budget(probe.store, probe.config, at=now(), tracked=0)
    tokens, capacity = state["tokens_now"], state["capacity"]
    if tokens < 1:
        wait = (1 - tokens) / (probe.config.rate_limit.per_minute / 60)
        report.add("rate budget", WARNING, f"empty (0 of {capacity:g}): the next request can go in "
                   f"{human_duration(wait)}; runs now wait for it")
    else:
        report.add("rate budget", OK, f"{int(tokens)} of {capacity:g} requests available, "
                   f"{state['requests_per_hour']:g} an hour")
