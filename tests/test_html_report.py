"""`report html`: the page's figures against counts made here in Python, the page itself (self-contained,
escaped), and one look at it in headless Chromium.

The figures are counted by the database (``etl.reports.page_figures``) on SQLite, PostgreSQL and MariaDB,
from a history that the real sync recorded against the fake API; the expected numbers are counted here
from the raw rows of the same tables, with Python's own date arithmetic.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import os
import re
import shutil
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select, update

from etl.cli import cli
from etl.db.dialects import dialect_for
from etl.db.models import connections, permission_changes, permission_grants, users, vehicles
from etl.db.store import Store
from etl.errors import ConfigError
from etl.reports import CHANGE_KINDS, PageFigures, Window, coverage_note, page_figures
from etl.tracking import track
from tests.conftest import Runner

UTC = dt.UTC
HOSTILE_MAKE = '<script>alert("make")</script>'
HOSTILE_PERMISSION = "<img src=x onerror=alert(1)>"
CHROMEDRIVER = "/usr/bin/chromedriver"


def when(day: float, hour: int = 10) -> dt.datetime:
    return dt.datetime(2026, 2, 20, hour, tzinfo=UTC) + dt.timedelta(days=day)


@dataclass
class History:
    c: dict[str, str]  # name -> connection id


@pytest.fixture
def history(run_sync: Runner, engine: Engine) -> History:
    """Six connections and six passes between 20 February and 10 March 2026 (the pattern of
    tests/test_reports.py), with a disconnection and a return, a hostile make and permission name, a
    connection of another application, and changes recorded without a kind (as older rows are)."""
    fake = run_sync.fake
    ids = {name: str(uuid.UUID(int=100 + i, version=4)) for i, name in enumerate(
        ["c1", "c2", "c3", "c4", "c5", "c6", "u1", "u2", "u3", "u4", "u5", "v1", "v2", "v3", "v4", "v5", "v6"])}

    def vehicle(make: str, powertrain: str) -> dict[str, Any]:
        return {"make": make, "model": "M", "year": 2024, "mode": "live", "powertrainType": powertrain}

    for conn, user, veh, perms, attrs in [
        ("c1", "u1", "v1", ["read_location", "read_odometer"], vehicle("Tesla", "BEV")),
        ("c2", "u1", "v2", ["read_odometer"], vehicle("Ford", "ICE")),
        ("c3", "u2", "v3", ["read_location", "read_battery"], vehicle(HOSTILE_MAKE, "BEV")),
        ("c4", "u3", "v4", ["read_location", HOSTILE_PERMISSION], vehicle("Toyota", "HEV")),
        ("c5", "u4", "v5", ["read_vin"], vehicle("BMW", "BEV")),
        ("c6", "u5", "v6", ["read_location"], vehicle("Kia", "BEV")),
    ]:
        fake.add(connection_id=ids[conn], user_id=ids[user], vehicle_id=ids[veh], permissions=perms, vehicle=attrs)
    track(Store(engine), [ids[f"c{i}"] for i in range(1, 7)], now=lambda: when(-1))

    def sync_at(at: dt.datetime) -> None:
        run_sync.clock.now = at
        run_sync(advance=dt.timedelta(0), ignore_due=True)

    sync_at(when(0))                                      # 20 Feb: everything first observed
    fake.set_permissions(ids["c4"], [HOSTILE_PERMISSION])
    sync_at(when(7))                                      # 27 Feb: c4 revokes read_location
    fake.set_permissions(ids["c3"], ["read_battery"])
    fake.set_permissions(ids["c2"], ["read_odometer", "read_location"])
    sync_at(when(11))                                     # 3 Mar: c3 revokes it, c2 grants it
    fake.remove(ids["c5"])
    sync_at(when(13))                                     # 5 Mar: c5 disconnects
    fake.restore(ids["c5"])
    fake.set_permissions(ids["c6"], [])
    sync_at(when(16))                                     # 8 Mar: c5 returns, c6 revokes read_location
    fake.set_permissions(ids["c1"], ["read_location"])
    sync_at(when(18))                                     # 10 Mar: c1 revokes read_odometer
    Store(engine).scoped("other").move([ids["c6"]])
    with engine.begin() as conn:  # c2's changes as an older database holds them
        conn.execute(update(permission_changes).where(permission_changes.c.connection_id == ids["c2"])
                     .values(kind=None))
    return History(c={k: v for k, v in ids.items() if k[0] == "c"})


# -- counting in Python from the raw rows -----------------------------------------------------------------------

def raw(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {
            "grants": conn.execute(select(permission_grants, connections.c.application).join(
                connections, connections.c.id == permission_grants.c.connection_id)).all(),
            "changes": conn.execute(select(permission_changes, connections.c.application).join(
                connections, connections.c.id == permission_changes.c.connection_id)).all(),
            "fleet": conn.execute(select(connections.c.application, connections.c.status, vehicles.c.make,
                                         vehicles.c.powertrain_type).outerjoin(
                vehicles, vehicles.c.id == connections.c.vehicle_id)).all(),
        }


def expected_instants(since: dt.datetime, until: dt.datetime, period: str) -> list[dt.datetime]:
    """since, every UTC midnight (or Monday midnight) after it and before until, then until."""
    step = dt.timedelta(days=1 if period == "day" else 7)
    at = since.replace(hour=0, minute=0, second=0, microsecond=0)
    at -= dt.timedelta(days=at.weekday() if period == "week" else 0)
    instants = [since]
    while (at := at + step) < until:
        instants.append(at)
    return [*instants, until]


def expected(engine: Engine, since: dt.datetime, until: dt.datetime, period: str,
             applications: list[str] | None) -> dict[str, Any]:
    rows = raw(engine)

    def ours(row: Any) -> bool:
        return applications is None or row.application in applications

    instants = expected_instants(since, until, period)
    grants = [g for g in rows["grants"] if ours(g) and g.valid_from <= until
              and (g.valid_to is None or g.valid_to > since)]
    held = {p: [sum(1 for g in grants if g.permission == p and g.valid_from <= t
                    and (g.valid_to is None or g.valid_to > t)) for t in instants]
            for p in {g.permission for g in grants}}
    step = dt.timedelta(days=1 if period == "day" else 7)
    origin = instants[1] - step  # the start of since's day or week
    changes = {kind: [0] * (len(instants) - 1) for kind in CHANGE_KINDS}
    for c in rows["changes"]:
        if ours(c) and since <= c.observed_at < until:
            changes[c.kind or c.change][(c.observed_at - origin) // step] += 1
    fleet = Counter((r.make, r.powertrain_type, r.status) for r in rows["fleet"] if ours(r))
    return {"instants": instants, "held": held, "changes": changes, "fleet": fleet}


def fleet_counts(figures: PageFigures) -> Counter[tuple[Any, ...]]:
    return Counter({(r["make"], r["powertrain_type"], status): r[status] for r in figures.fleet
                    for status in ("active", "pending", "deleted") if r[status]})


def test_the_page_figures_equal_counts_made_in_python(history: History, engine: Engine) -> None:
    with engine.connect() as conn:
        first = conn.scalar(select(permission_changes.c.observed_at).order_by(permission_changes.c.observed_at))
    assert first is not None
    windows = [
        (when(3, 7), when(17, 15), "day", None),  # neither end on a boundary
        (when(-2), when(25), "week", None),  # the whole history, by week
        (first, when(13, 0), "day", ["default"]),  # from the first observation itself; one application
    ]
    for since, until, period, applications in windows:
        figures = page_figures(engine, Window(since, until, period), applications=applications)
        want = expected(engine, since, until, period, applications)
        assert figures.window.instants() == want["instants"]
        assert figures.held == want["held"], (since, until, period)
        assert figures.changes == want["changes"], (since, until, period)
        assert fleet_counts(figures) == want["fleet"]
        assert figures.coverage == coverage_note(engine, since, applications=applications)

    # The counts say something: what the history above did, by hand.
    week = page_figures(engine, Window(when(-2), when(25), "week"))
    assert [sum(week.changes[k]) for k in CHANGE_KINDS] == [8, 2, 4, 1, 1]
    # c2's two grants have no kind: the first observation on 20 Feb counts as granted, as does 3 Mar's.
    assert week.changes["first_seen"] == [8, 0, 0, 0, 0] and week.changes["granted"] == [1, 0, 1, 0, 0]
    day = page_figures(engine, Window(when(3, 7), when(17, 15), "day"))
    # 23 Feb 07:00, then midnights from 24 Feb: c5 went away on 5 Mar at 10:00 and came back on 8 Mar at 10:00.
    assert day.held["read_vin"] == [1] * 11 + [0, 0, 0] + [1, 1]  # ... to 9 Mar 15:00
    assert day.held["read_location"][0] == 4  # c1, c3, c4 (until 27 Feb) and c6, of another application
    only = page_figures(engine, Window(when(3, 7), when(17, 15), "day"), applications=["default"])
    assert only.held["read_location"][0] == 3
    assert fleet_counts(only)[("Kia", "BEV", "active")] == 0 and fleet_counts(day)[("Kia", "BEV", "active")] == 1
    assert fleet_counts(day)[(HOSTILE_MAKE, "BEV", "active")] == 1


def test_a_period_starts_exactly_at_its_boundary(engine: Engine) -> None:
    """``steps_since`` counts in whole microseconds on each database: one microsecond before a boundary is
    the period before it (SQLite's julianday would round .999999 up), the boundary itself the next."""
    origin = dt.datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
    day, week, tick = dt.timedelta(days=1), dt.timedelta(weeks=1), dt.timedelta(microseconds=1)
    cases = {origin: (0, 0), origin + day - tick: (0, 0), origin + day: (1, 0), origin + 3 * day + tick: (3, 0),
             origin + week - tick: (6, 0), origin + week: (7, 1), origin + 400 * day + tick * 999_999: (400, 57)}
    with engine.begin() as conn:
        conn.execute(users.insert(), [{"id": f"u{n}", "first_seen_at": at, "last_seen_at": at}
                                      for n, at in enumerate(cases)])
    database = dialect_for(engine)
    with engine.connect() as conn:
        got = {at: tuple(row) for at, *row in conn.execute(select(
            users.c.first_seen_at, database.steps_since(users.c.first_seen_at, origin, day),
            database.steps_since(users.c.first_seen_at, origin, week)))}
        # Counted from a microsecond after the origin, as the held counts are: a boundary is its own instant.
        shifted = dict(conn.execute(select(users.c.first_seen_at, database.steps_since(
            users.c.first_seen_at, origin + tick, day))).all())
    assert got == cases
    assert shifted[origin + day] == 0 and shifted[origin + 3 * day + tick] == 3


def test_a_window_is_checked_and_cut_into_periods() -> None:
    window = Window(dt.datetime(2026, 3, 4, 15, tzinfo=UTC), dt.datetime(2026, 3, 17, tzinfo=UTC), "week")
    assert window.origin == dt.datetime(2026, 3, 2, tzinfo=UTC)  # the Monday of its week
    assert window.starts() == [dt.datetime(2026, 3, d, tzinfo=UTC) for d in (2, 9, 16)]
    assert window.instants() == expected_instants(window.since, window.until, "week")
    with pytest.raises(ConfigError, match="--until must be later than --since"):
        Window(window.until, window.since)
    with pytest.raises(ConfigError, match="--bucket must be one of day, week, not 'month'"):
        Window(window.since, window.until, "month")
    with pytest.raises(ConfigError, match="more than 1000"):
        Window(dt.datetime(2020, 1, 1, tzinfo=UTC), dt.datetime(2026, 1, 1, tzinfo=UTC), "day")


# -- the page the command writes ---------------------------------------------------------------------------------

class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text of its style elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.style = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style += data


def outside_references(page: str) -> list[str]:
    """Whatever in the page would make a browser fetch something: any src or href that is not a fragment of
    the page, an @import or url() in a style, an element that loads or runs something."""
    parsed = Tags()
    parsed.feed(page)
    found = [f"<{tag} {name}={value}>" for tag, attrs in parsed.tags for name, value in attrs.items()
             if name in ("src", "href", "xlink:href", "srcset", "action", "data") and not (value or "").startswith("#")]
    found += [f"<{tag}>" for tag, _ in parsed.tags if tag in ("script", "link", "img", "iframe", "object", "embed",
                                                            "image", "foreignobject", "base")]
    styles = parsed.style + " ".join(attrs.get("style") or "" for _, attrs in parsed.tags)
    found += re.findall(r"@import|url\(\s*['\"]?(?!#)[^)]*\)", styles)
    found += re.findall(r"(?:src|href)\s*=\s*['\"]?\s*https?://|url\(\s*['\"]?https?://", page, flags=re.I)
    return found


def test_the_reference_finder_finds_what_it_looks_for() -> None:
    assert outside_references('<p>a</p><svg><path clip-path="url(#p1)"/></svg>') == []
    assert outside_references('<img src="https://x.test/a.png">') == ['<img src=https://x.test/a.png>', "<img>",
                                                                      "src=\"https://"]
    assert outside_references("<style>@import 'x.css'; b { background: url(y.png) }</style>") == [
        "@import", "url(y.png)"]
    assert outside_references('<svg><a xlink:href="http://x.test">a</a></svg>')[0] == "<a xlink:href=http://x.test>"


def cli_report(engine: Engine, *args: str) -> Any:
    env = {"SMARTCAR_ETL_DATABASE_URL": engine.url.render_as_string(hide_password=False), "SMARTCAR_ETL_CONFIG": ""}
    return CliRunner().invoke(cli, ["report", "html", *args], env=env)


def table_cells(page: str, name: str) -> list[list[str]]:
    """The text of every cell of the page's table ``name``, row by row (the heading row first)."""
    table = re.search(rf'<table id="{name}">(.*?)</table>', page, re.S)
    assert table is not None
    return [[html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)]


def test_the_command_writes_a_self_contained_escaped_page(history: History, engine: Engine, tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    result = cli_report(engine, "--output", str(output), "--since", "2026-02-19", "--until", "2026-03-12",
                        "--bucket", "week")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote {output}: 5 permission(s), 4 week(s)\n"
    page = output.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 3
    assert outside_references(page) == []
    since = dt.datetime(2026, 2, 19, tzinfo=UTC)
    note = coverage_note(engine, since)
    assert note.startswith("history from 2026-02-20T10:00Z") and html.escape(note) in page
    # Hostile names reach the page, and the charts, only as text.
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert html.escape(HOSTILE_MAKE) in page and html.escape(HOSTILE_PERMISSION) in page
    assert [row[0] for row in table_cells(page, "fleet")[1:]].count(HOSTILE_MAKE) == 1
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert "&lt;img src=x onerror=alert(1)&gt;" in svgs[0] and "&lt;script&gt;" in svgs[2]
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id used twice in the page"
    # The tables hold the figures.
    figures = page_figures(engine, Window(since, dt.datetime(2026, 3, 12, tzinfo=UTC), "week"))
    held = table_cells(page, "held")
    assert held[0] == ["instant (UTC)", *sorted(figures.held)]
    assert [[int(n.replace(",", "")) for n in row[1:]] for row in held[1:]] == [
        [figures.held[p][i] for p in sorted(figures.held)] for i in range(len(figures.window.instants()))]


def test_the_command_refuses_a_bad_window_and_defaults_to_the_last_90_days(engine: Engine, tmp_path: Path) -> None:
    output = tmp_path / "report.html"
    backwards = cli_report(engine, "-o", str(output), "--since", "2026-03-09", "--until", "2026-03-02")
    assert backwards.exit_code == 2 and backwards.stderr == "Error: --until must be later than --since\n"
    monthly = cli_report(engine, "-o", str(output), "--bucket", "month")
    assert monthly.exit_code == 2 and "'month' is not one of 'day', 'week'" in monthly.output
    assert not output.exists()
    default = cli_report(engine, "-o", str(output))
    assert default.exit_code == 0, default.output
    shown = re.search(r'<p class="window">From <time datetime="([^"]+)">.*?<time datetime="([^"]+)">',
                      output.read_text(encoding="utf-8"))
    assert shown is not None
    since, until = (dt.datetime.fromisoformat(t) for t in shown.groups())
    assert until - since == dt.timedelta(days=90)
    assert abs(until - dt.datetime.now(UTC)) < dt.timedelta(minutes=5)


def test_without_matplotlib_the_command_says_what_to_install(engine: Engine, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import etl.report_html

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.delitem(sys.modules, "etl.report_html.charts", raising=False)
    monkeypatch.delattr(etl.report_html, "charts", raising=False)
    output = tmp_path / "report.html"
    result = cli_report(engine, "--output", str(output))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "pip install 'smartcar-etl[html]'" in result.stderr
    assert not output.exists()


# -- the page in a browser ----------------------------------------------------------------------------------------

def chromium(chromedriver: str = CHROMEDRIVER) -> tuple[str, str]:
    """The Chromium binary and its driver; skip without them, fail where ETL_REQUIRE_CHROMIUM=1 (.ci/run)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = chromedriver if os.path.exists(chromedriver) else shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", browser), ("chromedriver", driver)) if not found]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("ETL_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"ETL_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    assert browser and driver
    return browser, driver


def test_without_chromium_the_browser_test_skips_unless_required(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("ETL_REQUIRE_CHROMIUM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver not installed"):
        chromium(str(tmp_path / "chromedriver"))
    monkeypatch.setenv("ETL_REQUIRE_CHROMIUM", "1")
    with pytest.raises(pytest.fail.Exception, match="ETL_REQUIRE_CHROMIUM=1 but chromium and chromedriver"):
        chromium(str(tmp_path / "chromedriver"))


def browser_options(browser: str, size: str = "1200,1600") -> Any:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={size}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def distinct_colours(png: bytes) -> int:
    from PIL import Image  # matplotlib's own dependency

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return len(image.getcolors(maxcolors=1 << 24) or [])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # one page load: the browser is the slow part
def test_the_page_in_headless_chromium(history: History, engine: Engine, tmp_path: Path) -> None:
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    output = tmp_path / "report.html"
    assert cli_report(engine, "-o", str(output), "--since", "2026-02-18", "--until", "2026-03-12").exit_code == 0
    figures = page_figures(engine, Window(dt.datetime(2026, 2, 18, tzinfo=UTC), dt.datetime(2026, 3, 12, tzinfo=UTC)))
    driver = webdriver.Chrome(service=Service(driver_path), options=browser_options(browser))
    try:
        driver.get(output.as_uri())
        logged = driver.get_log("browser")
        png = driver.get_screenshot_as_png()
        tables = driver.execute_script(
            "const read = id => Array.from(document.querySelectorAll('#' + id + ' tr'), tr =>"
            "  Array.from(tr.cells, c => c.dataset.key || c.textContent));"
            "return {held: read('held'), changes: read('changes'), fleet: read('fleet'),"
            "        coverage: document.getElementById('coverage').textContent,"
            "        charts: document.querySelectorAll('svg').length,"
            "        height: document.querySelector('svg').getBoundingClientRect().height};")
    finally:
        driver.quit()
    assert [entry for entry in logged if entry["level"] in ("SEVERE", "WARNING")] == []
    assert png.startswith(b"\x89PNG") and distinct_colours(png) > 50  # charts, not a blank page
    assert tables["charts"] == 3 and tables["height"] > 100 and tables["coverage"] == figures.coverage

    def numbers(rows: list[list[str]]) -> list[list[int]]:
        return [[int(cell.replace(",", "")) for cell in row] for row in rows]

    held, changes, fleet = tables["held"], tables["changes"], tables["fleet"]
    assert held[0][1:] == sorted(figures.held) and HOSTILE_PERMISSION in held[0]
    assert numbers([row[1:] for row in held[1:]]) == [[figures.held[p][i] for p in held[0][1:]]
                                                      for i in range(len(figures.window.instants()))]
    assert changes[0][1:] == list(CHANGE_KINDS) and len(changes) == len(figures.window.starts()) + 1
    assert numbers([row[1:] for row in changes[1:]]) == [[figures.changes[k][i] for k in CHANGE_KINDS]
                                                         for i in range(len(figures.window.starts()))]
    assert [row[:2] for row in fleet[1:]] == [[r["make"], r["powertrain_type"]] for r in figures.fleet]
    assert numbers([row[2:] for row in fleet[1:]]) == [[r["active"], r["pending"], r["deleted"]]
                                                       for r in figures.fleet]


def test_a_window_at_the_ends_of_the_calendar_is_exit_2_not_an_internal_error(tmp_path: Path) -> None:
    env = {"SMARTCAR_ETL_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite", "SMARTCAR_ETL_CONFIG": ""}
    assert CliRunner().invoke(cli, ["db", "upgrade"], env=env).exit_code == 0
    for window in (["--since", "0001-01-01", "--until", "0001-02-01"],
                   ["--since", "9999-12-01", "--until", "9999-12-31T23:59:59"]):
        result = CliRunner().invoke(cli, ["report", "html", "-o", str(tmp_path / "r.html"), *window], env=env)
        assert result.exit_code == 2 and "years 2 to 9998" in result.output, result.output
