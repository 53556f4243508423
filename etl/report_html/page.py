"""The HTML page around the charts: one self-contained file, every value escaped.

Nothing in the page is fetched: the style is inline, the charts are inline SVG, there is no script,
and a Content-Security-Policy that allows nothing else says so to the browser as well. Every value
that comes from the database (permission names, makes, powertrains, the coverage line) or the
command line (application names) goes through ``html.escape``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from html import escape

from etl.reports import FLEET_STATUSES, PageFigures

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
p.coverage { background: #f4f4f4; border-left: 4px solid #888; padding: .5rem .75rem; }
figure { margin: 1rem 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9rem; }
details { margin: .5rem 0 1rem; } summary { cursor: pointer; color: #555; }
.scroll { overflow-x: auto; max-height: 20rem; overflow-y: auto; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid #e4e4e4; text-align: left; white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: #fff; }
tbody tr:nth-child(even) { background: #fafafa; }
"""
# Nothing may load: no script, no connection, no image or font; only the inline style.
POLICY = "default-src 'none'; style-src 'unsafe-inline'"
KIND_NAMES = {"first_seen": "first observed", "granted": "granted", "revoked": "revoked",
              "disconnected": "disconnected", "reconnected": "reconnected (returned)"}


def page(figures: PageFigures, charts: Sequence[str], *, applications: Sequence[str] | None,
         generated_at: dt.datetime) -> str:
    """The whole page: a heading, the window, the coverage line, then each chart with its table."""
    window = figures.window
    held, changes, fleet = charts
    scope = "every application" if applications is None else "application(s) " + ", ".join(applications)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>smartcar-etl report</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<h1>Smartcar connections: permissions, changes and fleet</h1>",
        f'<p class="window">From {_time(window.since)} to {_time(window.until)}, by {escape(window.period)} '
        f"(UTC), for {escape(scope)}. Generated {_time(generated_at)}.</p>",
        f'<p class="coverage" id="coverage">{escape(figures.coverage)}</p>',
        '<h2 id="held-over-time">Permissions held over time</h2>',
        _figure(held, "How many connections held each permission at the start of each "
                f"{window.period}, and at both ends of the window: the grant intervals open at that instant "
                "(a connection deleted later counts while its grant was open). The chart draws the "
                "most held permissions; the table has every one."),
        _held_table(figures),
        f'<h2 id="changes-per-{escape(window.period)}">Changes per {escape(window.period)}</h2>',
        _figure(changes, "First observations, grants and returns above the axis; revocations and "
                "disconnections below it. A change recorded without a kind counts as granted or revoked."),
        _changes_table(figures),
        '<h2 id="fleet-by-make">The fleet by make and powertrain</h2>',
        _figure(fleet, "Connections as stored now, by the vehicle's make and powertrain and the connection's "
                "status; the chart draws the largest groups, the table has every one."),
        _fleet_table(figures),
        "</body>",
        "</html>",
        "",
    ])


def _held_table(figures: PageFigures) -> str:
    names = sorted(figures.held)
    rows = [[_time(at), *(_number(figures.held[name][i]) for name in names)]
            for i, at in enumerate(figures.window.instants())]
    return _table("held", ["instant (UTC)", *(escape(name) for name in names)], rows)


def _changes_table(figures: PageFigures) -> str:
    kinds = list(figures.changes)
    rows = [[_time(start, period=figures.window.period), *(_number(figures.changes[kind][i]) for kind in kinds)]
            for i, start in enumerate(figures.window.starts())]
    header = [f"{escape(figures.window.period)} (UTC)", *(escape(KIND_NAMES.get(kind, kind)) for kind in kinds)]
    return _table("changes", header, rows, keys=["period", *kinds])


def _fleet_table(figures: PageFigures) -> str:
    rows = [[escape(row["make"] or "unknown"), escape(row["powertrain_type"] or "unknown"),
             *(_number(row[status]) for status in FLEET_STATUSES)] for row in figures.fleet]
    return _table("fleet", ["make", "powertrain", *FLEET_STATUSES], rows, labels=2)


def _table(name: str, header: list[str], rows: list[list[str]], *, labels: int = 1,
           keys: list[str] | None = None) -> str:
    """A table of already escaped cells, the first ``labels`` of a row naming it and the rest numbers, in a
    folding, scrolling box. ``data-key`` on a column heading names the column for programs reading the page
    (a kind's name, where the heading describes it)."""
    keyed: list[str | None] = list(keys) if keys else [None] * len(header)
    head = "".join(f'<th scope="col"{_key(key)}>{cell}</th>' for cell, key in zip(header, keyed, strict=True))
    body = "\n".join("<tr>" + "".join(f'<th scope="row">{cell}</th>' for cell in row[:labels])
                     + "".join(f'<td class="n">{cell}</td>' for cell in row[labels:]) + "</tr>" for row in rows)
    return (f'<details open><summary>the numbers</summary><div class="scroll"><table id="{name}">'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div></details>")


def _key(key: str | None) -> str:
    return "" if key is None else f' data-key="{escape(key)}"'


def _figure(svg: str, caption: str) -> str:
    """A chart (matplotlib's SVG, already escaped by it) and its caption."""
    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>"


def _time(at: dt.datetime, *, period: str | None = None) -> str:
    """An instant as a ``<time>`` element: the date alone for a period's start."""
    at = at.astimezone(dt.UTC)
    shown = at.strftime("%Y-%m-%d") if period else at.strftime("%Y-%m-%d %H:%M")
    return f'<time datetime="{escape(at.isoformat())}">{escape(shown)}</time>'


def _number(value: int) -> str:
    return f"{value:,}"
