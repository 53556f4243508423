"""JSON:API connection documents -> validated ``ConnectionRecord``s.

A document is valid when ``data.id`` is the id that was asked for, ``data.type``
is ``connection``, ``attributes.permissions`` is an array of permission names,
and ``relationships.user.data.id`` and ``relationships.vehicle.data.id`` are UUIDs.
Unknown fields are ignored. Validation rejects what SQLite, PostgreSQL and
MariaDB cannot all hold, and gives the same verdict whatever the database:

- **Critical** (ids, type, permissions): a bad value raises
  ``MalformedDocumentError``; the fetch of that one connection fails.
- **Descriptive** (vehicle attributes, ``meta.createdAt``/``updatedAt``): a bad
  value is stored as NULL; the record names the field in ``nulled`` and a
  warning names the connection and the field. The permissions still count.

Nothing is coerced into something that merely looks right. The limits are the
constants below (documented in docs/failures.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from etl.errors import MalformedDocumentError

log = logging.getLogger(__name__)

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# C0 and C1 control characters (NUL, newline, tab...) and lone surrogates (not encodable as UTF-8).
UNSTORABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_PERMISSION_LENGTH = 100
MAX_PERMISSIONS = 1000  # entries in attributes.permissions, duplicates included
MAX_TEXT_LENGTH = 200  # make, model, mode, powertrainType
YEARS = range(1886, 10_000)  # vehicle year: from the first car to four digits
TIMESTAMP_YEARS = range(1000, 10_000)  # in UTC: what MariaDB's DATETIME(6) and every other database hold
MAX_NUMBER_DIGITS = 30  # longer integers are not read as numbers at all (see decode_json)


def canonical_id(value: object) -> str | None:
    """The lower-case canonical form of a UUID string, or None if the whole value is not one."""
    if isinstance(value, str) and UUID_RE.fullmatch(value):
        return value.lower()
    return None


class OutOfRange:
    """A JSON number no column can hold: NaN, Infinity, or an integer of more than MAX_NUMBER_DIGITS digits."""

    __slots__ = ("raw", "text")

    def __init__(self, text: str) -> None:
        self.raw = text  # as read (the archive keeps it whole)
        self.text = text if len(text) <= 24 else f"{text[:10]}…({len(text)} characters)"

    def __repr__(self) -> str:
        return self.text


def _bounded_int(text: str) -> int | OutOfRange:
    return int(text) if len(text.lstrip("-")) <= MAX_NUMBER_DIGITS else OutOfRange(text)


def decode_json(content: bytes) -> Any:
    """Parse a JSON body; ValueError (with a reason) if it is not JSON or is nested too deeply.

    Absurd numbers do not make the whole body unreadable: they become ``OutOfRange``
    values, which validation then refuses where they stand.
    """
    try:
        return json.loads(content, parse_int=_bounded_int, parse_constant=OutOfRange)
    except RecursionError:
        msg = "body is nested too deeply"
        raise ValueError(msg) from None
    except (ValueError, UnicodeDecodeError):
        msg = "body is not JSON"
        raise ValueError(msg) from None


# The vehicle's attributes, declared once: each is a field of ``VehicleAttributes`` and a column of
# ``vehicles`` of the same name, read from the document's ``attributes.vehicle`` under its key, as text or as
# a year. A new attribute is a line here, a field below, a column in ``etl/db/models.py`` and a migration (and,
# as every column, its description in ``dbt/models/sources.yml``); the batch store and ``rebuild`` take the list
# from here.
VEHICLE_KEYS: dict[str, tuple[str, str]] = {
    "make": ("make", "text"), "model": ("model", "text"), "year": ("year", "year"), "mode": ("mode", "text"),
    "powertrain_type": ("powertrainType", "text"),
}
VEHICLE_FIELDS = tuple(VEHICLE_KEYS)


@dataclass(frozen=True)
class VehicleAttributes:
    """What the connection document says about its vehicle (each may be None); ``VEHICLE_KEYS`` reads them."""

    make: str | None = None
    model: str | None = None
    year: int | None = None
    mode: str | None = None
    powertrain_type: str | None = None


@dataclass(frozen=True)
class ConnectionRecord:
    """One connection as the API returned it, validated and canonical.

    ``nulled`` names the descriptive fields whose value could not be stored (they are None here).
    """

    connection_id: str
    user_id: str
    vehicle_id: str
    permissions: frozenset[str]
    vehicle: VehicleAttributes
    source_created_at: dt.datetime | None = None
    source_updated_at: dt.datetime | None = None
    nulled: tuple[str, ...] = ()
    # The resource as archived (``canonical_document``); empty for a record not made from a document.
    document: bytes = field(default=b"", compare=False, repr=False)


def canonical_document(resource: Any) -> bytes:
    """A connection resource as the archive keeps it: canonical JSON (sorted keys, no whitespace, ASCII
    with escapes) without any ``links`` member, which differ between a GET and a listing item of the
    same state. A number no column can hold (``OutOfRange``) is kept whole, as a string of the text it was
    read as; a float too large for a double reads back as ``Infinity``.
    """
    return json.dumps(_without_links(resource), sort_keys=True, separators=(",", ":"), default=_as_read).encode()


def _as_read(value: Any) -> str:
    if isinstance(value, OutOfRange):
        return value.raw
    msg = f"not JSON: {type(value).__name__}"
    raise TypeError(msg)


def _without_links(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_links(v) for k, v in value.items() if k != "links"}
    if isinstance(value, list):
        return [_without_links(v) for v in value]
    return value


class _Problem(Exception):
    pass


def _bad(problem: str) -> NoReturn:
    raise _Problem(problem)


def _show(value: Any) -> str:
    """A short, printable rendering of a bad value for messages (containers by their type only)."""
    text = repr(value) if isinstance(value, str | int | float | OutOfRange) or value is None else type(value).__name__
    return text if len(text) <= 60 else text[:59] + "…"


def _text_problem(value: Any, max_length: int) -> str | None:
    """Why ``value`` is not a storable string, or None if it is one."""
    if not isinstance(value, str):
        return f"is {type(value).__name__}, expected a string"
    if len(value) > max_length:
        return f"is {len(value)} characters long, more than {max_length}"
    if UNSTORABLE_RE.search(value):
        return f"has a control character: {_show(value)}"
    return None


def _get(obj: Any, *keys: str) -> Any:
    """Walk nested objects; a missing key or a non-object on the way is a problem."""
    path = "data"
    for key in keys:
        if not isinstance(obj, dict):
            _bad(f"{path} is not an object")
        if key not in obj:
            _bad(f"{path}.{key} is missing")
        obj = obj[key]
        path += f".{key}"
    return obj


def _uuid(data: Any, *keys: str) -> str:
    value = _get(data, *keys)
    canonical = canonical_id(value)
    if canonical is None:
        _bad(f"data.{'.'.join(keys)} is not a UUID: {_show(value)}")
    return canonical


def _permissions(data: Any) -> frozenset[str]:
    permissions = _get(data, "attributes", "permissions")
    if not isinstance(permissions, list):
        _bad("data.attributes.permissions is not an array")
    if len(permissions) > MAX_PERMISSIONS:
        _bad(f"data.attributes.permissions has {len(permissions)} entries, more than {MAX_PERMISSIONS}")
    for permission in permissions:
        problem = _text_problem(permission, MAX_PERMISSION_LENGTH)
        if problem is None and (not permission.strip() or permission != permission.strip()):
            problem = f"is not a permission name: {_show(permission)}"
        if problem is not None:
            _bad(f"data.attributes.permissions holds a value that {problem}")
    return frozenset(permissions)


class _Descriptive:
    """Reads descriptive fields; a bad one becomes None and is remembered in ``nulled``."""

    def __init__(self, connection_id: str) -> None:
        self.connection_id = connection_id
        self.nulled: list[str] = []

    def reject(self, field: str, problem: str) -> None:
        """Remember and warn that ``field`` is stored as NULL; returns None (the value stored)."""
        self.nulled.append(field)
        log.warning("connection %s: %s %s; stored as NULL", self.connection_id, field, problem,
                    extra={"connection_id": self.connection_id, "field": field})

    def read(self, kind: str, vehicle: dict[str, Any], key: str) -> Any:
        """A vehicle attribute of ``kind`` (``text`` or ``year``, as ``VEHICLE_KEYS`` says) under ``key``."""
        return self.year(vehicle, key) if kind == "year" else self.text(vehicle, key)

    def text(self, vehicle: dict[str, Any], key: str) -> str | None:
        value = vehicle.get(key)
        if value is None:
            return None
        problem = _text_problem(value, MAX_TEXT_LENGTH)
        if problem is not None:
            self.reject(f"data.attributes.vehicle.{key}", problem)
            return None
        return str(value)

    def year(self, vehicle: dict[str, Any], key: str) -> int | None:
        value = vehicle.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.reject(f"data.attributes.vehicle.{key}", f"is {_show(value)}, expected a whole number")
            return None
        if value not in YEARS:
            self.reject(f"data.attributes.vehicle.{key}", f"is {value}, outside {YEARS.start}-{YEARS.stop - 1}")
            return None
        return value

    def timestamp(self, meta: Any, key: str) -> dt.datetime | None:
        if not isinstance(meta, dict) or meta.get(key) is None:
            return None
        value, field = meta[key], f"data.meta.{key}"
        if not isinstance(value, str) or len(value) > 64:
            self.reject(field, f"is {_show(value)}, expected an ISO-8601 time")
            return None
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            self.reject(field, f"is not an ISO-8601 time: {_show(value)}")
            return None
        if parsed.tzinfo is None:
            self.reject(field, f"has no time zone: {_show(value)}")
            return None
        try:
            utc = parsed.astimezone(dt.UTC)
        except OverflowError:
            utc = None
        if utc is None or utc.year not in TIMESTAMP_YEARS:
            self.reject(field, f"is outside the years {TIMESTAMP_YEARS.start}-{TIMESTAMP_YEARS.stop - 1} "
                               f"in UTC: {_show(value)}")
            return None
        return utc


def parse_resource(data: Any, *, expected_id: str | None, path: str) -> ConnectionRecord:
    """Validate one connection resource (the ``data`` member, or one item of a listing)."""
    try:
        if not isinstance(data, dict):
            _bad("data is not an object")
        connection_id = canonical_id(data.get("id"))
        if connection_id is None:
            _bad(f"data.id is not a UUID: {_show(data.get('id'))}")
        if expected_id is not None and connection_id != expected_id:
            _bad(f"data.id is {connection_id}, not the id that was asked for")
        if data.get("type") != "connection":
            _bad(f"data.type is {_show(data.get('type'))}, expected 'connection'")
        permissions = _permissions(data)
        user_id = _uuid(data, "relationships", "user", "data", "id")
        vehicle_id = _uuid(data, "relationships", "vehicle", "data", "id")
    except _Problem as problem:
        raise MalformedDocumentError(path=path, status=200, detail=str(problem),
                                     document=canonical_document(data)) from None
    fields = _Descriptive(connection_id)
    vehicle = data["attributes"].get("vehicle")
    if vehicle is not None and not isinstance(vehicle, dict):
        fields.reject("data.attributes.vehicle", "is not an object")
    vehicle = vehicle if isinstance(vehicle, dict) else {}
    return ConnectionRecord(
        connection_id=connection_id,
        user_id=user_id,
        vehicle_id=vehicle_id,
        permissions=permissions,
        vehicle=VehicleAttributes(**{name: fields.read(kind, vehicle, key)
                                     for name, (key, kind) in VEHICLE_KEYS.items()}),
        source_created_at=fields.timestamp(data.get("meta"), "createdAt"),
        source_updated_at=fields.timestamp(data.get("meta"), "updatedAt"),
        nulled=tuple(fields.nulled),
        document=canonical_document(data),
    )


def parse_connection(body: Any, *, expected_id: str, path: str) -> ConnectionRecord:
    """Validate a ``GET /connections/{id}`` body for the id that was asked for."""
    if not isinstance(body, dict) or "data" not in body:
        raise MalformedDocumentError(path=path, status=200, detail="body has no data member",
                                     document=canonical_document(body))
    return parse_resource(body["data"], expected_id=expected_id, path=path)
