"""What differs between the supported databases, in one place.

Today: which URLs (database and driver) are supported and how they are
normalised, and how driver errors sort into "the database is unreachable" and
"this row was refused".
"""

from __future__ import annotations

from sqlalchemy import exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# backend -> (drivers accepted, the driver plain "backend://" means)
DRIVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "sqlite": (("pysqlite",), "pysqlite"),
    "postgresql": (("psycopg",), "psycopg"),
}
SUPPORTED_URLS = "sqlite:///PATH, postgresql://, postgresql+psycopg://"


def normalise_url(text: str) -> str:
    """The URL with its driver made explicit where needed; ValueError naming what is supported otherwise."""
    try:
        url: URL = make_url(text)
    except ArgumentError:
        msg = f"not a SQLAlchemy database URL (supported: {SUPPORTED_URLS})"
        raise ValueError(msg) from None
    backend = url.get_backend_name()
    if backend not in DRIVERS:
        msg = f"unsupported database {backend[:40]!r} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    drivers, default = DRIVERS[backend]
    driver = url.get_driver_name() if "+" in url.drivername else default
    if driver not in drivers:
        msg = f"unsupported driver {driver[:40]!r} for {backend} (supported: {SUPPORTED_URLS})"
        raise ValueError(msg)
    if backend == "postgresql":
        # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
        return url.set(drivername=f"{backend}+{driver}").render_as_string(hide_password=False)
    return text


def is_unreachable(error: exc.DBAPIError) -> bool:
    """True when the database itself failed (gone, refused, not a database file), not one statement's data.

    A refused row (a value out of range, a NUL in text, a broken constraint)
    costs only its connection; anything here aborts the run (exit 3).
    """
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        return True
    # SQLite reports a file that is not a database, or is corrupt, as a plain DatabaseError.
    return type(error) is exc.DatabaseError
