"""Output in three formats, line by line: the same text as before, without holding every row."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from etl.output import WIDTH_SAMPLE, render, render_chunks

COLUMNS = ("id", "at", "note")


def rows(count: int, consumed: list[int] | None = None) -> Iterator[dict[str, Any]]:
    for n in range(count):
        if consumed is not None:
            consumed.append(n)
        yield {"id": n, "at": dt.datetime(2026, 3, 1, tzinfo=dt.UTC), "note": "x" * (n % 7) or None}


@pytest.mark.parametrize("count", [0, 1, 3])
def test_json_and_csv_are_exactly_what_the_libraries_write(count: int) -> None:
    expected = [{"id": r["id"], "at": r["at"].isoformat(), "note": r["note"]} for r in rows(count)]
    assert render(rows(count), COLUMNS, "json") == json.dumps(expected)  # one line
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([[str(r["id"]), r["at"].isoformat(), r["note"] or ""] for r in rows(count)])
    assert render(rows(count), COLUMNS, "csv") == buffer.getvalue().rstrip("\n")


def test_a_table_pads_its_columns_and_says_when_it_is_empty() -> None:
    assert render(rows(0), COLUMNS).splitlines()[-1] == "(no rows)"
    lines = render(rows(3), COLUMNS).splitlines()
    assert lines[0].split() == list(COLUMNS) and set(lines[1]) == {"-", " "} and len(lines) == 5
    assert lines[2].startswith("0   2026-03-01T00:00:00+00:00")


@pytest.mark.parametrize("fmt, most", [("json", 2), ("table", WIDTH_SAMPLE), ("csv", 2000)])
def test_lines_come_before_the_rows_are_all_read(fmt: str, most: int) -> None:
    consumed: list[int] = []
    lines = render_chunks(rows(100_000, consumed), COLUMNS, fmt)
    first = next(lines)
    assert first and len(consumed) <= most
    assert sum(1 for _ in lines) > 0 and len(consumed) == 100_000
