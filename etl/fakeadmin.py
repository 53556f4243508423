"""The fake API's admin endpoint: change its world while it runs, to rehearse change detection end to end.

``POST /_admin/VERB?connection=ID[&permission=P]``, served by the same ``FakeApi.handle`` (so on the fake's
loopback address, or through ``httpx.MockTransport`` in tests):

- ``revoke`` / ``grant``: the user revokes or grants ``permission`` on the connection;
- ``remove``: the user disconnects: the connection answers Smartcar's 404 until ``restore``;
- ``restore``: the disconnected connection comes back as it was;
- ``add``: a new connection (``connection`` optional; ``permission`` repeatable, else ``read_vehicle_info``).

Each answers 200 with the connection as the API now shows it (``id``, ``status``, ``permissions``) and
whether anything ``changed`` (asking for what already holds is not an error). Bad or missing parameters are
400, an unknown connection 404, a verb that needs a connected one on a disconnected one 409.

No token: the API's bearer token is not needed (or accepted in its place), and the fake listens only on
loopback. What a browser could do is refused instead: a request addressed to any host but a loopback
address or ``localhost`` (a DNS-rebinding page), or carrying an ``Origin`` header (a cross-site form or
script; curl and httpx send none), is 403.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

import httpx

from etl.api.documents import canonical_id
from etl.config import is_loopback_host

if TYPE_CHECKING:
    from etl.fakeapi import FakeApi, FakeConnection

ADMIN_PREFIX = "/_admin/"
VERBS = ("revoke", "grant", "remove", "restore", "add")
PERMISSION_RE = re.compile(r"[a-z][a-z0-9_]{0,99}")
_LOCK = threading.Lock()  # one admin change at a time: each reads a connection and writes it back


class AdminError(Exception):
    """An admin request that cannot be done: its HTTP status and why."""

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(reason)

    def response(self) -> httpx.Response:
        """The admin endpoint's answer for this error."""
        return httpx.Response(self.status, json={"error": self.reason})


def is_admin(request: httpx.Request) -> bool:
    """Whether the request is for the admin endpoint."""
    return request.url.path.startswith(ADMIN_PREFIX)


def admin_verb(request: httpx.Request) -> str:
    """The verb of an admin request the endpoint may answer; AdminError (403, 404, 405) if it may not."""
    if not is_loopback_host(request.url.host) or "origin" in request.headers:
        raise AdminError(403, "the admin endpoint answers only requests to the fake's loopback address, "
                              "and none from a browser page (an Origin header)")
    verb = request.url.path[len(ADMIN_PREFIX):]
    if verb not in VERBS:
        raise AdminError(404, f"no admin verb {verb[:40]!r}; the verbs are {', '.join(VERBS)}")
    if request.method != "POST":
        raise AdminError(405, f"use POST /_admin/{verb}")
    return verb


def answer_admin(fake: FakeApi, request: httpx.Request) -> httpx.Response:
    """Answer an admin request: change the fake's world, or say why not."""
    try:
        verb = admin_verb(request)
        with _LOCK:
            return httpx.Response(200, json=_change(fake, verb, request.url.params))
    except AdminError as error:
        return error.response()


def _change(fake: FakeApi, verb: str, params: httpx.QueryParams) -> dict[str, Any]:
    if verb == "add":
        permissions = [_permission(p) for p in params.get_list("permission")] or None
        given = params.get("connection")
        new_id = _id(given) if given is not None else None
        if new_id in fake.connections or new_id in fake.removed:
            raise AdminError(409, f"connection {new_id} exists already")
        return _state(fake.add(permissions=permissions, connection_id=new_id), connected=True, changed=True)
    connection_id = _id(params.get("connection"))
    conn = fake.connections.get(connection_id)
    gone = fake.removed.get(connection_id)
    if conn is None and gone is None:
        raise AdminError(404, f"no connection {connection_id}")
    if verb == "restore":
        if gone is not None:
            fake.restore(connection_id)
        return _state(conn or gone, connected=True, changed=gone is not None)  # type: ignore[arg-type]
    if verb == "remove":
        if conn is not None:
            fake.remove(connection_id)
        return _state(conn or gone, connected=False, changed=conn is not None)  # type: ignore[arg-type]
    if conn is None:
        raise AdminError(409, f"connection {connection_id} is disconnected: POST /_admin/restore first")
    permission = _permission(params.get("permission"))
    held = list(conn.permissions)
    wanted = [p for p in held if p != permission] if verb == "revoke" else \
        held + ([permission] if permission not in held else [])
    if wanted != held:
        fake.set_permissions(connection_id, wanted)
    return _state(conn, connected=True, changed=wanted != held)


def _id(value: str | None) -> str:
    canonical = canonical_id(value)
    if canonical is None:
        raise AdminError(400, "connection= must be a connection id (a UUID)" if value is None
                         else f"connection={value[:60]!r} is not a UUID")
    return canonical


def _permission(value: str | None) -> str:
    if value is None or not PERMISSION_RE.fullmatch(value):
        shown = "missing" if value is None else f"{value[:60]!r} is not a permission name like read_odometer"
        raise AdminError(400, f"permission= {shown}")
    return value


def _state(conn: FakeConnection, *, connected: bool, changed: bool) -> dict[str, Any]:
    return {"id": conn.id, "status": "connected" if connected else "disconnected",
            "permissions": list(conn.permissions), "changed": changed}
