"""`report html`: one self-contained HTML page of charts and tables over the stored history.

The numbers come from ``etl.reports`` (counted by the database: ``page_figures``); this package only
draws them (``charts``, with matplotlib, an optional extra: ``pip install 'smartcar-etl[html]'``) and
lays out the page (``page``). Nothing in the page refers to anything outside it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from types import ModuleType

from sqlalchemy import Engine

from etl.clock import utcnow
from etl.errors import ConfigError
from etl.files import write_text
from etl.reports import PageFigures, Window, page_figures

MISSING_EXTRA = "report html draws its charts with matplotlib, which is not installed: pip install 'smartcar-etl[html]'"


def _charts() -> ModuleType:
    """The charts module; a ConfigError (exit 2, one line) saying what to install when matplotlib is missing."""
    try:
        from etl.report_html import charts
    except ImportError as error:
        if (error.name or "").partition(".")[0] != "matplotlib":
            raise
        raise ConfigError(MISSING_EXTRA) from None
    return charts


def render_page(figures: PageFigures, *, applications: Sequence[str] | None = None,
                now: Callable[[], dt.datetime] = utcnow) -> str:
    """The page for ``figures``, as text."""
    from etl.report_html.page import page

    drawn = _charts().charts(figures)
    return page(figures, drawn, applications=applications, generated_at=now())


def write_report(engine: Engine, output: str, window: Window, *, applications: Sequence[str] | None = None,
                 now: Callable[[], dt.datetime] = utcnow) -> PageFigures:
    """Count the figures of ``window``, draw them and write the page to ``output`` (whole or not at all)."""
    _charts()  # before any query: a missing extra is said at once
    figures = page_figures(engine, window, applications=applications)
    write_text(output, render_page(figures, applications=applications, now=now), where="--output")
    return figures
