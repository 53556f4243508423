"""The one exception tree of smartcar-etl.

Every error the library raises on purpose is an ``EtlError``; the CLI turns it
into a message on stderr and the exit code named on its class::

    EtlError                      exit 1
    ├── ConfigError               exit 2  bad option, config key or input value
    │   ├── InvalidIdError                a connection id that is not a UUID
    │   └── UnverifiableArchive           archived documents rebuild cannot verify (corrupt, altered, misplaced)
    ├── DatabaseError             exit 3  database unreachable or not a database
    │   ├── NotMigratedError      exit 2  the schema is not at the latest revision
    │   └── NoDatabaseError       exit 2  a SQLite file that does not exist (only `db upgrade` creates it)
    ├── ApiError                  exit 1  one request failed; the connection is a failed fetch
    │   ├── RetriableApiError             429, 5xx, timeout, network: worth another try
    │   ├── MalformedDocumentError        a 200 whose body is not a valid document
    │   ├── RowRejected                   the database refused a connection's rows (past validation)
    │   └── FatalApiError         exit 3  the run cannot go on: 401 after renewal, 403, 430
    │       └── AuthenticationError       credentials refused or token unobtainable
    ├── SyncError                 exit 1  a run finished with failures
    │   └── SyncAborted           exit 3  a run stopped early and stored nothing further
    └── LockHeld                  exit 4  another run holds the database's run lock

Messages are built from structured fields, never from request headers, tokens
or secrets, so they are safe to print and to store in ``fetch_errors``.
"""

from __future__ import annotations

import re
import reprlib
from typing import NamedTuple

_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def one_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an error (a driver error's own, without SQLAlchemy's SQL and parameters),
    printable and clipped: safe to print, log and store."""
    cause = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    text = f"{type(cause).__name__}: {lines[0] if lines else ''}"
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class EtlError(Exception):
    """Root of every error smartcar-etl raises on purpose."""

    exit_code = 1


class ConfigError(EtlError):
    """Configuration or usage is wrong; every problem is listed at once."""

    exit_code = 2

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            message = f"{len(self.errors)} problems:\n" + "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(message)


class InvalidIdError(ConfigError):
    """One or more connection ids are not UUIDs; nothing was stored or sent.

    Each value is shown clipped, and at most ``SHOWN`` of them, then how many more.
    """

    SHOWN = 10
    CLIP = 60

    def __init__(self, bad: list[tuple[str, str | None]], *, total: int | None = None) -> None:
        """``bad`` holds (where, value) pairs, e.g. ("ids.txt, line 3", "abc"); a None value is not UTF-8.

        ``total`` is how many bad values there were, when ``bad`` holds only the first of them.
        """
        self.bad = bad
        self.total = len(bad) if total is None else total
        errors = [f"{where}: {clipped(value, self.CLIP)} is not a connection id (a UUID)" if value is not None
                  else f"{where}: not UTF-8 text" for where, value in bad[: self.SHOWN]]
        if self.total > self.SHOWN:
            errors.append(f"… and {self.total - self.SHOWN:,} more")
        super().__init__(errors)


def clipped(value: str, limit: int = 60) -> str:
    """``value``'s repr, cut to about ``limit`` characters with its full length said: safe to echo back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…' ({len(value):,} characters)"


def shown(value: object, limit: int = 60) -> str:
    """Any value's repr for an error message, clipped; a list or mapping is never repr'd whole (it may be vast:
    a YAML alias shares one list many times over)."""
    text = _SHORT_REPR.repr(value) if isinstance(value, list | dict | tuple | set) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_SHORT_REPR = reprlib.Repr()  # a few items of a few levels (Python 3.11's Repr takes no keyword arguments)
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict, _SHORT_REPR.maxstring = 2, 4, 4, 40


class DatabaseError(EtlError):
    """The database cannot be reached or used."""

    exit_code = 3

    def __init__(self, *, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database {url if len(url) <= 200 else url[:199] + '…'}: {reason}")


class NotMigratedError(DatabaseError):
    """The database schema is missing or behind the code."""

    exit_code = 2

    def __init__(self, *, url: str, current: str | None, head: str) -> None:
        self.current = current
        self.head = head
        super().__init__(
            url=url,
            reason=(f"schema is at revision {current or 'none'}, expected {head}; "
                    "run `smartcar-etl db upgrade` first"),
        )


class NoDatabaseError(DatabaseError):
    """The SQLite database file does not exist, and this command does not create it."""

    exit_code = 2

    def __init__(self, *, url: str) -> None:
        super().__init__(url=url, reason="the file does not exist; run `smartcar-etl db upgrade` first to create it")


class ApiError(EtlError):
    """A request to the Smartcar API did not give a usable answer."""

    kind = "http"

    def __init__(
        self,
        *,
        path: str,
        status: int | None = None,
        reason: str | None = None,
        code: str | None = None,
        detail: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.path = path
        self.status = status
        self.reason = reason
        self.code = code
        self.detail = detail
        if kind is not None:
            self.kind = kind
        parts = [f"{self.kind}"]
        if status is not None:
            parts.append(f"HTTP {status}" + (f" {reason}" if reason else ""))
        if code:
            parts.append(code)
        message = " ".join(parts) + f" on {path}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class RetriableApiError(ApiError):
    """A transient failure: rate limit, server error, timeout or network."""

    def __init__(self, *, retry_after: float | None = None, **fields: object) -> None:
        self.retry_after = retry_after
        super().__init__(**fields)  # type: ignore[arg-type]


class MalformedDocumentError(ApiError):
    """A 200 answer whose body is not a valid connection document.

    ``document``: the body (its ``data`` resource where it has one) as the archive keeps it, when it was
    JSON at all; it is archived flagged as rejected, so that a later fix can reach it (``rebuild``).
    """

    kind = "malformed"

    def __init__(self, *, document: bytes | None = None, **fields: object) -> None:
        self.document = document
        super().__init__(**fields)  # type: ignore[arg-type]


class RowRejected(ApiError):
    """The database refused what a connection's document would write, although it passed validation.

    Only that connection fails; it is recorded like any failed fetch.
    """

    kind = "rejected"


class FatalApiError(ApiError):
    """The API refuses the application as a whole; the run must stop."""

    exit_code = 3


class AuthenticationError(FatalApiError):
    """Credentials were refused, or no token could be obtained."""

    kind = "auth"


class SyncError(EtlError):
    """A run finished, but some connections failed."""

    exit_code = 1


class SyncAborted(SyncError):
    """A run was aborted and stored nothing further."""

    exit_code = 3

    def __init__(self, *, run_id: int | None, cause: EtlError) -> None:
        self.run_id = run_id
        self.cause = cause
        where = f"run {run_id}" if run_id is not None else "run"
        super().__init__(f"{where} aborted: {cause}")


class LockHeld(EtlError):
    """Another run holds this database's run lock."""

    exit_code = 4

    def __init__(self, *, url: str, holder: str) -> None:
        self.holder = holder
        super().__init__(f"another run holds the lock on {url}: {holder}")


class Unverified(NamedTuple):
    """One archived observation that ``rebuild`` cannot verify: its span, its body, and why."""

    span_id: int
    body_id: int | None
    connection_id: str  # the span's
    reason: str


class UnverifiableArchive(ConfigError):
    """Archived documents that ``rebuild`` would replay cannot be verified; nothing was changed.

    At most ``SHOWN`` of them are named (span, connection, body, reason), then how many more.
    """

    SHOWN = 10

    def __init__(self, bad: list[Unverified], *, total: int | None = None) -> None:
        self.bad = bad
        self.total = len(bad) if total is None else total
        lines = [f"span {u.span_id} of connection {u.connection_id} (body {u.body_id}): {u.reason}"
                 for u in bad[: self.SHOWN]]
        if self.total > self.SHOWN:
            lines.append(f"… and {self.total - self.SHOWN:,} more")
        header = (f"{self.total:,} archived observation(s) cannot be verified, so rebuild replays none of them "
                  "and nothing was changed")
        super().__init__(header + ":\n" + "\n".join(f"  - {line}" for line in lines))
