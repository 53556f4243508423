"""Make docs/html-report.png: `report html` over a demo-like history, photographed in headless Chromium.

Eight weeks of daily passes of the real sync against the bundled fake API (in process, a fake clock):
connections are tracked in waves, and between passes users grant and revoke permissions, one
disconnects, one comes back (``FakeApi.churn``). The page is written with the library's own
``write_report`` and photographed with the same headless Chromium and chromedriver the tests use;
the PNG is reduced to a small palette so that it stays well under 200 KB.

Usage:
    .venv/bin/python scripts/html_screenshot.py [--output docs/html-report.png] [--page report.html]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import tempfile
from pathlib import Path

import httpx
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from etl.config import ApiConfig, Config, RateLimitConfig, RetryConfig, Secret, SyncConfig
from etl.context import Seams
from etl.db.engine import make_engine
from etl.db.store import Store
from etl.fakeapi import FakeApi
from etl.report_html import write_report
from etl.reports import Window
from etl.sync import sync
from etl.tracking import track

START = dt.datetime(2026, 1, 5, 6, tzinfo=dt.UTC)
DAYS = 56


def build(url: str) -> Store:
    """A database holding DAYS days of daily passes over a growing set of connections."""
    fake = FakeApi(client_id="demo-client", client_secret="demo-secret-not-real")
    ids = fake.populate(160, seed=7)
    config = Config(database_url=url, api=ApiConfig(base_url="https://api.test/v3",
                                                    token_url="https://auth.test/oauth2/token",
                                                    client_id=fake.client_id, client_secret=Secret(fake.client_secret)),
                    retry=RetryConfig(max_attempts=2), sync=SyncConfig(strategy="ids"),
                    rate_limit=RateLimitConfig(capacity=1_000_000, per_minute=60_000_000))
    store = Store(make_engine(url))
    store.upgrade()
    clock = {"now": START}

    def now() -> dt.datetime:
        clock["now"] += dt.timedelta(milliseconds=3)
        return clock["now"]

    for day in range(DAYS):
        clock["now"] = START + dt.timedelta(days=day, minutes=7 * (day % 5))
        if day % 7 == 0:  # a new wave of connections each week
            track(store, ids[: 60 + 14 * (day // 7)], now=now)
        if day:
            fake.churn(seed=day, changes=3 + day % 4)
        sync(config, store, ignore_due=True,
             seams=Seams(transport=httpx.MockTransport(fake.handle), sleep=lambda _: None, now=now))
    return store


def photograph(page: Path, output: Path) -> int:
    """Screenshot ``page`` in headless Chromium; the PNG's size in bytes."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,2700", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(page.resolve().as_uri())
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    image.save(output, optimize=True)
    return output.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/html-report.png"))
    parser.add_argument("--page", type=Path, help="also keep the HTML page here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(f"sqlite:///{Path(tmp) / 'demo.db'}")
        page = args.page or Path(tmp) / "report.html"
        try:
            end = START + dt.timedelta(days=DAYS)
            write_report(store.engine, str(page), Window(START - dt.timedelta(days=2), end, "day"),
                         now=lambda: end)
        finally:
            store.engine.dispose()
        print(f"{args.output}: {photograph(page, args.output) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
