"""The demo's SQLite file: made new and marked by the demo, so that a later demo can prove it may replace it.

Only such a file is ever replaced: a database with no runs yet is not evidence enough (a production
database just migrated and given its connection ids has none). The marker is a small table of its
own, written before the migrations; Alembic neither reads nor touches tables it does not own.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

MARKER_TABLE = "smartcar_etl_demo"
MARKER = "made by `smartcar-etl demo`, which may replace this file"


def create_marked(path: Path) -> None:
    """Create a new SQLite file at ``path`` holding the demo's marker.

    FileExistsError when anything is there, a symbolic link (dangling or not) included:
    O_EXCL never follows one.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"CREATE TABLE {MARKER_TABLE} (note TEXT NOT NULL)")
        db.execute(f"INSERT INTO {MARKER_TABLE} (note) VALUES (?)", (MARKER,))


@dataclass(frozen=True)
class Marks:
    """What a SQLite file says of its maker: the demo's marker, and the triggers of the runs it records."""

    marked: bool
    triggers: frozenset[str]


def read_marks(path: Path, *, with_journal: bool = False) -> Marks | None:
    """The marks of the SQLite file at ``path``, read-only; None if it is not a SQLite database.

    Without ``with_journal`` only the file itself is read (SQLite's ``immutable``): its write-ahead
    log and shared memory are neither read nor touched, since they may be somebody else's. With it,
    runs still in the log count too; SQLite may then rebuild the shared memory file.
    """
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro" + ("" if with_journal else "&immutable=1")
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            notes = db.execute(f"SELECT note FROM {MARKER_TABLE}").fetchall() if MARKER_TABLE in tables else []
            triggers = (frozenset(t for (t,) in db.execute("SELECT DISTINCT trigger FROM sync_runs"))
                        if "sync_runs" in tables else frozenset())
    except sqlite3.Error:
        return None
    return Marks(marked=notes == [(MARKER,)], triggers=triggers)
