"""Which connection ids are tracked: read ids (arguments, files), add, list, untrack."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, BinaryIO

from etl.api.documents import canonical_id
from etl.clock import utcnow
from etl.db.store import Store, TrackResult
from etl.errors import InvalidIdError
from etl.files import open_bounded, read_lines

__all__ = ["LIST_COLUMNS", "TrackResult", "ids_from_arguments", "ids_from_file", "list_connections", "parse_ids",
           "track", "untrack"]


def parse_ids(values: Iterable[tuple[str, str | None]]) -> list[str]:
    """Canonical ids from (where, value) pairs; a None value stands for a line that is not UTF-8.

    The whole value must be a UUID (a trailing newline or space is not part of
    one). Every bad value is reported with where it stood, and then none is
    returned, so nothing half-valid is stored or sent. Duplicates are kept
    once, in order.
    """
    ids: dict[str, None] = {}
    bad: list[tuple[str, str | None]] = []
    count = 0
    for where, value in values:
        canonical = canonical_id(value)
        if canonical is None:
            count += 1
            if len(bad) < InvalidIdError.SHOWN:
                bad.append((where, value[: InvalidIdError.CLIP * 4] if value is not None else None))
        else:
            ids[canonical] = None
    if bad:
        raise InvalidIdError(bad, total=count)
    return list(ids)


def ids_from_arguments(arguments: Iterable[str]) -> list[str]:
    """Canonical ids from command-line arguments, each exactly a UUID."""
    return parse_ids((f"argument {number}", value) for number, value in enumerate(arguments, start=1))


def ids_from_file(name: str) -> list[str]:
    """Canonical ids from a file (``-``: standard input): one a line, blank lines and ``#`` comments skipped.

    The file is read within the size limit of ``etl.files``; a line that is not
    UTF-8 is reported with its number, like an id that is not a UUID.
    """
    source = "stdin" if name == "-" else name

    def values(file: BinaryIO) -> Iterator[tuple[str, str | None]]:
        for number, line in read_lines(file, where=source):
            text = line.split("#", 1)[0].strip() if line is not None else None
            if text != "":
                yield f"{source}, line {number}", text

    with open_bounded(name, where=source, allow_stdin=True) as file:
        return parse_ids(values(file))


def track(store: Store, ids: Sequence[str], *, now: Callable[[], dt.datetime] = utcnow) -> TrackResult:
    """Start tracking ``ids`` (already canonical); untracked ones are tracked again. One transaction."""
    store.require_migrated()
    return store.track(ids, at=now())


def untrack(store: Store, ids: Sequence[str]) -> tuple[int, list[str]]:
    """Stop polling ``ids``; rows and history stay. Returns (untracked count, ids that were unknown)."""
    store.require_migrated()
    return store.untrack(ids)


LIST_COLUMNS = ("application", "connection_id", "status", "tracked", "user_id", "vehicle_id", "permissions",
                "last_success_at", "last_attempt_at", "last_error")


def list_connections(store: Store, *, include_untracked: bool = False) -> Iterator[dict[str, Any]]:
    """Connections with status, open permission count, last success and last error, as they are read."""
    store.require_migrated()
    return store.connection_rows(include_untracked=include_untracked)
