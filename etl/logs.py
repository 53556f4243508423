"""Logging to stderr, as text or JSON lines; extra fields (run_id, connection_id, ...) included."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

from etl.output import escape_unsafe

# Attributes every LogRecord has; anything else was passed in ``extra``.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message`` in UTC, one line a record; control, bidirectional and line-separator
    characters escaped (``\\n``, ``\\u202e``).

    A traceback is never printed as lines of its own: the message names the
    error, and the JSON format keeps the traceback in its ``exception`` field.
    """

    converter = staticmethod(lambda secs: dt.datetime.fromtimestamp(secs or 0, dt.UTC).timetuple())

    def __init__(self) -> None:
        super().__init__("%(asctime)sZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                            "stack_info": None})
        # A value from outside (an API's text, a file name) cannot break the line or reorder it on a terminal.
        return escape_unsafe(super().format(record))


class _EtlHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second setup replaces only it."""


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send the job's logs to stderr; quieten libraries that log every request."""
    handler = _EtlHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EtlHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "alembic.runtime.migration", "alembic.runtime.plugins", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
