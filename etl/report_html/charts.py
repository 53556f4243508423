"""The page's charts: matplotlib figures written as SVG text to be placed inline in the page.

No GUI backend and no pyplot state: each chart is a plain ``Figure`` saved with the SVG backend.
Text stays text (``svg.fonttype: none``: the browser's own sans-serif font, no font file or glyph
paths), math notation is off (a ``$`` in a permission name or make is only a character), the SVG
metadata that names matplotlib's web site is left out, and each chart salts the ids it generates
(clip paths) so that three charts in one page never share an id. matplotlib escapes the text it
writes into SVG, so a name from the API cannot become markup.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Sequence
from typing import Any

from matplotlib import dates, rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

from etl.report_html.page import KIND_NAMES
from etl.reports import FLEET_STATUSES, PageFigures

STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#dddddd",
    "legend.frameon": False,
}
# Every key matplotlib would otherwise write into the SVG's <metadata> (one of them a web address).
NO_METADATA: dict[str, Any] = {"Creator": None, "Date": None, "Format": None, "Type": None}
# Above the axis what adds, below it what takes away; the same colour for a kind on every page.
KIND_COLOURS = {"first_seen": "#8da0cb", "granted": "#1b9e77", "reconnected": "#66a61e",
                "revoked": "#d95f02", "disconnected": "#7570b3"}
TAKES_AWAY = ("revoked", "disconnected")
STATUS_COLOURS = {"active": "#1b9e77", "pending": "#e6ab02", "deleted": "#999999"}
MOST_LINES = 12  # permissions drawn in the held chart (the table lists every one)
MOST_BARS = 25  # makes and powertrains drawn in the fleet chart (likewise)


def held_chart(figures: PageFigures) -> str:
    """A step chart: for the most held permissions, the connections holding each at every instant."""
    with rc_context(_style("held")):
        figure = Figure(figsize=(9, 4))
        axes = figure.add_subplot()
        instants = _days(figures.window.instants())
        drawn = most_held(figures.held)[:MOST_LINES]
        # Ten colours, then the same ten dashed: no two lines look alike.
        lines = [axes.step(instants, figures.held[name], where="post", color=f"C{n % 10}",
                           linestyle="-" if n < 10 else "--")[0] for n, name in enumerate(drawn)]
        # Explicit labels: a name that starts with "_" would otherwise be left out of the legend.
        axes.legend(lines, [_shown(name) for name in drawn], loc="upper left", bbox_to_anchor=(1.01, 1))
        axes.set_ylabel("connections holding it")
        axes.yaxis.set_major_formatter(_thousands())
        axes.set_ylim(bottom=0)
        _time_axis(axes)
        return _svg(figure, "held", "Connections holding each permission over time")


def changes_chart(figures: PageFigures) -> str:
    """Stacked bars per period: first observations, grants and returns above the axis, revocations and
    disconnections below it."""
    with rc_context(_style("changes")):
        figure = Figure(figsize=(9, 3.6))
        axes = figure.add_subplot()
        starts = _days(figures.window.starts())
        width = figures.window.step / dt.timedelta(days=1) * 0.85
        above, below = [0] * len(starts), [0] * len(starts)
        for kind, counts in figures.changes.items():
            sign, base = (-1, below) if kind in TAKES_AWAY else (1, above)
            axes.bar(starts, [sign * n for n in counts], width=width, bottom=[sign * b for b in base],
                     align="edge", label=KIND_NAMES.get(kind, kind), color=KIND_COLOURS.get(kind, "#aaaaaa"))
            for i, n in enumerate(counts):
                base[i] += n
        axes.axhline(0, color="#444444", linewidth=0.8)
        handles, labels = axes.get_legend_handles_labels()
        axes.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1))
        axes.set_ylabel(f"changes per {figures.window.period}")
        axes.yaxis.set_major_formatter(_thousands())
        _time_axis(axes)
        return _svg(figure, "changes", "Changes per period by kind")


def fleet_chart(figures: PageFigures) -> str:
    """Horizontal stacked bars: connections by make and powertrain, split by status."""
    rows = figures.fleet[:MOST_BARS]
    with rc_context(_style("fleet")):
        figure = Figure(figsize=(9, 1.2 + 0.28 * max(len(rows), 1)))
        axes = figure.add_subplot()
        labels = [f"{_shown(row['make'])} · {_shown(row['powertrain_type'])}" for row in rows]
        positions = list(range(len(rows)))
        left = [0] * len(rows)
        for status in FLEET_STATUSES:
            counts = [row[status] for row in rows]
            axes.barh(positions, counts, left=left, label=status, color=STATUS_COLOURS[status])
            left = [a + b for a, b in zip(left, counts, strict=True)]
        axes.set_yticks(positions, labels)
        axes.invert_yaxis()  # the largest at the top
        axes.grid(axis="y", visible=False)
        axes.set_xlabel("connections")
        axes.xaxis.set_major_formatter(_thousands())
        handles, names = axes.get_legend_handles_labels()
        axes.legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1))
        return _svg(figure, "fleet", "Connections by make and powertrain")


def most_held(held: dict[str, list[int]]) -> list[str]:
    """Permission names, the most held at the end of the window first (then by name)."""
    return sorted(held, key=lambda name: (-held[name][-1], -max(held[name]), name))


def _style(salt: str) -> dict[Any, Any]:
    """The charts' settings, with ``salt`` for the ids of this chart's SVG."""
    return {**STYLE, "svg.hashsalt": salt}


def _thousands() -> StrMethodFormatter:
    """Tick labels with thousands separators (one formatter per axis: matplotlib binds it to its axis)."""
    return StrMethodFormatter("{x:,.0f}")


def _days(instants: list[dt.datetime]) -> list[float]:
    """Instants as matplotlib's date numbers (days), which its date axis reads."""
    return [float(day) for day in dates.date2num(instants)]  # type: ignore[no-untyped-call]


def _shown(value: str | None) -> str:
    """A name as a chart shows it: unknown for NULL."""
    return "unknown" if value is None else value


def _time_axis(axes: Axes) -> None:
    # matplotlib.dates has no type annotations
    locator = dates.AutoDateLocator(minticks=4, maxticks=10, tz=dt.UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=dt.UTC))  # type: ignore[no-untyped-call]


def _svg(figure: Figure, name: str, title: str) -> str:
    """The figure as an ``<svg>`` element (no XML declaration or DOCTYPE) with a title, whose ids are its own."""
    buffer = io.StringIO()
    with rc_context({"svg.id": f"chart-{name}"}):
        figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={**NO_METADATA, "Title": title})
    text = buffer.getvalue()
    return _own_ids(text[text.index("<svg"):], f"{name}-")


TAG = re.compile(r"<[^>]*>")  # text between tags is escaped by matplotlib: it holds no "<"
ID_USE = re.compile(r'(\sid="|url\(#|href="#)([^")]+)')


def _own_ids(svg: str, prefix: str) -> str:
    """``svg`` with ``prefix`` before every id inside it and every reference to one: matplotlib numbers its
    groups per figure (``axes_1``, ``text_1``...), so two charts in one page would share them."""
    ids = set(re.findall(r'\sid="([^"]+)"', svg)[1:])  # the first is the chart's own: kept

    def rename(match: re.Match[str]) -> str:
        return match.group(1) + (prefix if match.group(2) in ids else "") + match.group(2)

    return TAG.sub(lambda tag: ID_USE.sub(rename, tag.group(0)), svg)


def charts(figures: PageFigures) -> Sequence[str]:
    """The three charts, in the page's order."""
    return held_chart(figures), changes_chart(figures), fleet_chart(figures)
