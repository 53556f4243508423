"""JSON:API connection documents -> validated ``ConnectionRecord``s.

A document is valid when ``data.id`` is the id that was asked for, ``data.type``
is ``connection``, ``attributes.permissions`` is an array of strings, and
``relationships.user.data.id`` and ``relationships.vehicle.data.id`` are UUIDs.
Vehicle attributes may be missing or null; ``year``, when present, is an integer.
Unknown fields are ignored. Anything else raises ``MalformedDocumentError``:
nothing is coerced into something that merely looks right.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from etl.errors import MalformedDocumentError

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_PERMISSION_LENGTH = 100


def canonical_id(value: object) -> str | None:
    """The lower-case canonical form of a UUID string, or None if it is not one."""
    if isinstance(value, str) and UUID_RE.match(value):
        return value.lower()
    return None


@dataclass(frozen=True)
class VehicleAttributes:
    """What the connection document says about its vehicle (each may be None)."""

    make: str | None = None
    model: str | None = None
    year: int | None = None
    mode: str | None = None
    powertrain_type: str | None = None


@dataclass(frozen=True)
class ConnectionRecord:
    """One connection as the API returned it, validated and canonical."""

    connection_id: str
    user_id: str
    vehicle_id: str
    permissions: frozenset[str]
    vehicle: VehicleAttributes
    source_created_at: dt.datetime | None = None
    source_updated_at: dt.datetime | None = None


class _Problem(Exception):
    pass


def _bad(problem: str) -> NoReturn:
    raise _Problem(problem)


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


def _optional_string(attrs: dict[str, Any], key: str) -> str | None:
    value = attrs.get(key)
    if value is None or isinstance(value, str):
        return value
    _bad(f"data.attributes.vehicle.{key} is {type(value).__name__}, expected a string")


def _timestamp(meta: Any, key: str) -> dt.datetime | None:
    if not isinstance(meta, dict) or meta.get(key) is None:
        return None
    value = meta[key]
    if not isinstance(value, str):
        _bad(f"data.meta.{key} is not a string")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        _bad(f"data.meta.{key} is not an ISO-8601 time: {value[:40]!r}")
    if parsed.tzinfo is None:
        _bad(f"data.meta.{key} has no time zone: {value[:40]!r}")
    return parsed.astimezone(dt.UTC)


def _uuid(data: Any, *keys: str) -> str:
    value = _get(data, *keys)
    canonical = canonical_id(value)
    if canonical is None:
        _bad(f"data.{'.'.join(keys)} is not a UUID")
    return canonical


def parse_resource(data: Any, *, expected_id: str | None, path: str) -> ConnectionRecord:
    """Validate one connection resource (the ``data`` member, or one item of a listing)."""
    try:
        if not isinstance(data, dict):
            _bad("data is not an object")
        connection_id = canonical_id(data.get("id"))
        if connection_id is None:
            _bad("data.id is not a UUID")
        if expected_id is not None and connection_id != expected_id:
            _bad(f"data.id is {connection_id}, not the id that was asked for")
        if data.get("type") != "connection":
            _bad(f"data.type is {data.get('type')!r}, expected 'connection'")
        permissions = _get(data, "attributes", "permissions")
        if not isinstance(permissions, list):
            _bad("data.attributes.permissions is not an array")
        for permission in permissions:
            if not isinstance(permission, str) or not permission.strip():
                _bad(f"data.attributes.permissions holds {permission!r}, not a permission name")
            if len(permission) > MAX_PERMISSION_LENGTH or permission != permission.strip():
                _bad(f"data.attributes.permissions holds {permission[:40]!r}, not a permission name")
        vehicle = data["attributes"].get("vehicle")
        if vehicle is None:
            vehicle = {}
        if not isinstance(vehicle, dict):
            _bad("data.attributes.vehicle is not an object")
        year = vehicle.get("year")
        if year is not None and (isinstance(year, bool) or not isinstance(year, int)):
            _bad(f"data.attributes.vehicle.year is {year!r}, expected an integer")
        meta = data.get("meta")
        return ConnectionRecord(
            connection_id=connection_id,
            user_id=_uuid(data, "relationships", "user", "data", "id"),
            vehicle_id=_uuid(data, "relationships", "vehicle", "data", "id"),
            permissions=frozenset(permissions),
            vehicle=VehicleAttributes(
                make=_optional_string(vehicle, "make"),
                model=_optional_string(vehicle, "model"),
                year=year,
                mode=_optional_string(vehicle, "mode"),
                powertrain_type=_optional_string(vehicle, "powertrainType"),
            ),
            source_created_at=_timestamp(meta, "createdAt"),
            source_updated_at=_timestamp(meta, "updatedAt"),
        )
    except _Problem as problem:
        raise MalformedDocumentError(path=path, status=200, detail=str(problem)) from None


def parse_connection(body: Any, *, expected_id: str, path: str) -> ConnectionRecord:
    """Validate a ``GET /connections/{id}`` body for the id that was asked for."""
    if not isinstance(body, dict) or "data" not in body:
        raise MalformedDocumentError(path=path, status=200, detail="body has no data member")
    return parse_resource(body["data"], expected_id=expected_id, path=path)
