"""Render rows as a readable table, CSV or JSON (the keys are the table's column names).

Output is safe to paste, ship and open: JSON is one line (a JSON-lines log can hold it); a CSV cell that a
spreadsheet would run as a formula starts with ``'``; a table shows control, bidirectional-override and
line-separator characters escaped (``\\x1b``, ``\\u202e``), so a value cannot rewrite the terminal or make
the text read otherwise than it is.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

FORMATS = ("table", "csv", "json")
# C0 and C1 controls, DEL, lone surrogates (unprintable), and the characters that reorder or break text:
# bidirectional embeddings, overrides and isolates, LRM/RLM/ALM, and the line and paragraph separators.
UNSAFE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# OWASP's CSV injection advice: a cell starting with one of these is a formula to Excel, LibreOffice, Sheets.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_unsafe(text: str) -> str:
    """``text`` with control, bidirectional and line-separator characters written as ``\\x1b``, ``\\u202e``."""
    return UNSAFE_RE.sub(_escaped, text)


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _cell(value: Any) -> str:
    """A CSV cell: text the job was given (an API's make, a name) never starts a formula; numbers are as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return _text(value)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


WIDTH_SAMPLE = 1000  # rows a table measures its column widths on; longer cells further down just stick out


def render(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: str = "table") -> str:
    """The rows in ``fmt``; ``table`` pads columns, ``csv`` has a header row, ``json`` is one array on one line."""
    return "".join(render_chunks(rows, columns, fmt)).removesuffix("\n")


def render_chunks(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], fmt: str = "table") -> Iterator[str]:
    """The rows in ``fmt``, in pieces as they come, to be written one after another as they are (their newlines
    are in them; the last ends with one): a million rows never sit in memory at once, and a JSON array of them
    is still one line."""
    if fmt == "json":
        yield from _json_chunks(rows, columns)
    elif fmt == "csv":
        buffer = _Rows()
        writer = csv.writer(buffer, lineterminator="\r\n")  # so that a lone \r in a cell is quoted too
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
            if buffer.size > 65536:
                yield buffer.take()
        yield buffer.take()
    else:
        yield from (line + "\n" for line in _table_lines(rows, columns))


class _Rows:
    """Where csv.writer writes: it writes each row whole, and each row's CRLF is kept as a plain newline."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, row: str) -> int:
        self.parts.append(row.removesuffix("\r\n") + "\n")
        self.size += len(row)
        return len(row)

    def take(self) -> str:
        text, self.parts, self.size = "".join(self.parts), [], 0
        return text


def _json_chunks(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    """``[``, the objects with ``, `` between them, ``]`` and a newline: exactly ``json.dumps`` of the list."""
    separator = "["
    for row in rows:
        yield separator + json.dumps({c: _json_value(row.get(c)) for c in columns})
        separator = ", "
    yield ("[" if separator == "[" else "") + "]\n"


def _table_lines(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Iterator[str]:
    source = iter(rows)
    sample = [[escape_unsafe(_text(r.get(c))) for c in columns] for r in itertools.islice(source, WIDTH_SAMPLE)]
    widths = [max([len(c)] + [len(row[i]) for row in sample]) for i, c in enumerate(columns)]
    yield "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    yield "  ".join("-" * w for w in widths)
    if not sample:
        yield "(no rows)"
    rest = ([escape_unsafe(_text(r.get(c))) for c in columns] for r in source)
    for cells in itertools.chain(sample, rest):
        yield "  ".join(v.ljust(w) for v, w in zip(cells, widths, strict=True)).rstrip()
