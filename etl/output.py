"""Render rows as a readable table, CSV or JSON (the keys are the table's column names)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


WIDTH_SAMPLE = 1000  # rows a table measures its column widths on; longer cells further down just stick out


def render(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: str = "table") -> str:
    """The rows in ``fmt``; ``table`` pads columns, ``csv`` has a header row, ``json`` is one array."""
    return "\n".join(render_lines(rows, columns, fmt))


def render_lines(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: str = "table") -> Iterator[str]:
    """The rows in ``fmt``, line by line, as they come: a million rows never sit in memory at once."""
    if fmt == "json":
        yield from _json_lines(rows, columns)
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row.get(c)) for c in columns])
            if buffer.tell() > 65536:
                yield buffer.getvalue().rstrip("\n")
                buffer.seek(0)
                buffer.truncate()
        if buffer.tell():
            yield buffer.getvalue().rstrip("\n")
    else:
        yield from _table_lines(rows, columns)


def _json_lines(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    previous: str | None = None
    for row in rows:
        item = textwrap.indent(json.dumps({c: _json_value(row.get(c)) for c in columns}, indent=2), "  ")
        yield ("[" if previous is None else previous + ",")
        previous = item
    yield "[]" if previous is None else previous + "\n]"


def _table_lines(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    source = iter(rows)
    sample = [[_text(r.get(c)) for c in columns] for r in itertools.islice(source, WIDTH_SAMPLE)]
    widths = [max([len(c)] + [len(row[i]) for row in sample]) for i, c in enumerate(columns)]
    yield "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    if not sample:
        yield "(no rows)"
    rest = ([_text(r.get(c)) for c in columns] for r in source)
    for cells in itertools.chain(sample, rest):
        yield "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip()
