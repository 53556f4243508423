"""One run at a time per database.

- PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection held for the whole run. A process that dies loses its connection,
  and with it the lock.
- SQLite: ``flock`` on a file beside the database (``<database>.lock``). The
  kernel releases it when the holder's process ends, however it ends (SIGKILL
  included), so a crashed holder cannot keep it.

The loser learns which run holds the lock from the ``running`` row in
``sync_runs`` (its id, trigger, start, pid and host) and raises ``LockHeld``
(exit 4).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, select, text

from etl.db.engine import safe_url, translate_errors
from etl.db.models import sync_runs
from etl.errors import EtlError

# pg advisory lock key: a fixed 64-bit number of our own ("smartcar-etl" in spirit).
ADVISORY_KEY = 0x5C_E7_1A_0C_2B_5E_7A_11 - (1 << 63)


class LockHeld(EtlError):
    """Another run holds this database's lock."""

    exit_code = 4

    def __init__(self, *, url: str, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another run holds the lock on {url}: {holder}")


def describe_holder(engine: Engine) -> str:
    """The run that holds the lock, as its ``running`` row tells (best effort)."""
    r = sync_runs.c
    try:
        with engine.connect() as conn:
            row = conn.execute(
                select(r.id, r.trigger, r.started_at, r.pid, r.host)
                .where(r.status == "running").order_by(r.id.desc()).limit(1)
            ).first()
    except Exception:  # the description must never hide the LockHeld itself
        row = None
    if row is None:
        return "a run that has not recorded itself yet"
    where = f", pid {row.pid}" + (f" on {row.host}" if row.host else "") if row.pid else ""
    return f"run {row.id} ({row.trigger}, started {row.started_at:%Y-%m-%d %H:%M:%S} UTC{where})"


def sqlite_lock_path(engine: Engine) -> Path | None:
    """The lock file of a SQLite file database; None for an in-memory one."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{Path(database).expanduser().resolve()}.lock")


@contextmanager
def run_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's run lock for the duration, or raise LockHeld at once."""
    url = safe_url(engine.url.render_as_string())
    if engine.dialect.name == "postgresql":
        with translate_errors(engine):
            conn = engine.connect()
        try:
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY})
            conn.commit()  # the lock is the session's; no transaction stays open
            if not got:
                raise LockHeld(url=url, holder=describe_holder(engine))
            try:
                yield
            finally:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
                    conn.commit()
                except Exception:  # noqa: S110 - closing the connection below releases it anyway
                    pass
        finally:
            conn.close()
        return
    path = sqlite_lock_path(engine)
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(url=url, holder=describe_holder(engine)) from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
