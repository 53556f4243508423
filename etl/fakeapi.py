"""The bundled fake Smartcar API: tests, ``demo``, ``fake-api`` and benchmarks share it.

``FakeApi.handle`` takes an ``httpx.Request`` and returns an ``httpx.Response``,
so tests plug it into ``httpx.MockTransport``; ``serve`` puts the same object
behind a real HTTP server on loopback. It implements the client-credentials
token endpoint, ``GET /v3/connections/{id}``, the paged ``GET /v3/connections``,
both documented error shapes, and scripted faults (``fail_next``); ``POST /_admin/...`` changes its
world while it runs (``etl.fakeadmin``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx

from etl.api.listing import pages_for
from etl.api.ratelimit import TokenBucket
from etl.fakeadmin import answer_admin, is_admin
from etl.fakeserver import REASONS
from etl.fakeserver import serve as serve  # the HTTP half lives there; callers import it from here

TOKEN_PATH = "/oauth2/token"
API_PREFIX = "/v3"
MAX_PAGE_SIZE = 100

PERMISSIONS = (
    "read_vehicle_info", "read_odometer", "read_location", "read_battery", "read_charge",
    "read_fuel", "read_vin", "read_tires", "read_security", "control_charge", "control_security",
)
VEHICLES = (
    ("Tesla", "Model 3", "BEV"), ("Ford", "F-150", "ICE"), ("Toyota", "Prius", "HEV"),
    ("BMW", "i3", "BEV"), ("Volkswagen", "ID.4", "BEV"), ("Toyota", "RAV4 Prime", "PHEV"),
    ("Chevrolet", "Bolt EV", "BEV"), ("Hyundai", "Ioniq 5", "BEV"), ("Kia", "Niro", "PHEV"),
    ("Ford", "Mustang Mach-E", "BEV"),
)
# Ways a fake connection can be served as a malformed document.
BREAKAGES = ("no_user", "bad_permission", "wrong_id", "not_json", "permissions_string", "wrong_type")


@dataclass
class FakeConnection:
    """One connection in the fake world."""

    id: str
    user_id: str
    vehicle_id: str
    permissions: list[str]
    vehicle: dict[str, Any]
    created_at: str = "2026-01-01T00:00:00Z"
    updated_at: str = "2026-01-01T00:00:00Z"
    broken: str | None = None  # one of BREAKAGES: served as a malformed document
    raw: bytes | None = None  # served verbatim as the GET answer's body (a hostile document), with raw_headers
    raw_headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Fault:
    """A scripted failure for the next matching request(s)."""

    status: int | None = 500  # None: answer normally (after ``delay``)
    headers: dict[str, str] = field(default_factory=dict)
    shape: str = "v3"  # v3 | v2 | html | text | malformed_json | empty | other_json
    code: str | None = None  # the error code in the body (v3: ``code``; v2: ``code``)
    delay: float = 0.0  # seconds to sleep before answering (or before raising)
    error: str | None = None  # "timeout" or "connect": raise instead of answering
    match: str | None = None  # substring of the path and decoded query; None: any API request
    times: int = 1


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


class FakeApi:
    """In-memory Smartcar API state, a request log, and scripted failures."""

    def __init__(
        self,
        *,
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        access_tokens: tuple[str, ...] = (),
        token_ttl: int = 3600,
        error_shape: str = "v3",
        clock: Callable[[], float] = time.monotonic,
        rate_limit: tuple[float, float] | None = None,
        latency: float = 0.0,
    ) -> None:
        """``rate_limit`` is (capacity, refills per second) of a bucket the fake enforces with 429s;
        ``latency`` (seconds) delays every answer of the API (not of the token endpoint), as a real one is."""
        self.latency = latency
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl = token_ttl
        self.error_shape = error_shape
        self.clock = clock
        self.connections: dict[str, FakeConnection] = {}
        self.removed: dict[str, FakeConnection] = {}
        self.requests: list[tuple[str, str]] = []
        self.request_times: list[tuple[float, str, str]] = []  # (time.monotonic(), method, path)
        self.faults: list[Fault] = []
        # How the listing looks: meta key for the page number, links.next style, totalCount or not.
        self.listing: dict[str, Any] = {"page_key": "page", "next": "relative", "total": True}
        self.hooks: list[Callable[[httpx.Request], None]] = []  # called after every answered request
        self.rate_limited = 0  # 429s answered by the bucket
        self._bucket = TokenBucket(capacity=rate_limit[0], per_second=rate_limit[1], clock=clock) \
            if rate_limit else None
        self._tokens: dict[str, float] = dict.fromkeys(access_tokens, float("inf"))
        self._token_counter = 0
        self.issued_tokens: list[str] = []
        self._lock = threading.Lock()

    # -- the world ---------------------------------------------------------

    def add(
        self,
        *,
        permissions: list[str] | None = None,
        connection_id: str | None = None,
        user_id: str | None = None,
        vehicle_id: str | None = None,
        vehicle: dict[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> FakeConnection:
        """Add a connection (ids random unless given) and return it."""
        rng = rng or random.Random()
        make, model, powertrain = rng.choice(VEHICLES)
        conn = FakeConnection(
            id=connection_id or _uuid(rng),
            user_id=user_id or _uuid(rng),
            vehicle_id=vehicle_id or _uuid(rng),
            permissions=list(permissions if permissions is not None else ["read_vehicle_info"]),
            vehicle=vehicle if vehicle is not None else {
                "make": make, "model": model, "year": rng.randint(2015, 2026),
                "mode": "live" if rng.random() < 0.9 else "simulated", "powertrainType": powertrain,
            },
        )
        with self._lock:
            self.connections[conn.id] = conn
        return conn

    def populate(self, count: int, *, seed: int = 0) -> list[str]:
        """Add ``count`` connections with random permissions; some users own several vehicles."""
        rng = random.Random(seed)
        users = [_uuid(rng) for _ in range(max(1, int(count * 0.7)))]
        ids = []
        for _ in range(count):
            permissions = rng.sample(PERMISSIONS, rng.randint(1, 5))
            ids.append(self.add(permissions=permissions, user_id=rng.choice(users), rng=rng).id)
        return ids

    def set_permissions(self, connection_id: str, permissions: list[str]) -> None:
        """Change what the API reports for a connection from now on."""
        with self._lock:
            conn = self.connections[connection_id]
            conn.permissions = list(permissions)
            conn.updated_at = _iso(dt.datetime.now(dt.UTC))

    def remove(self, connection_id: str) -> None:
        """Disconnect: the connection answers 404 until ``restore``."""
        with self._lock:
            self.removed[connection_id] = self.connections.pop(connection_id)

    def restore(self, connection_id: str) -> None:
        """Bring a removed connection back."""
        with self._lock:
            self.connections[connection_id] = self.removed.pop(connection_id)

    def churn(self, *, seed: int, changes: int = 5) -> list[str]:
        """Change the world between passes: grants, revocations, a disconnection, a return.

        Returns a human-readable line per change.
        """
        rng = random.Random(seed)
        said = []
        for conn_id in rng.sample(sorted(self.connections), min(changes, len(self.connections))):
            perms = list(self.connections[conn_id].permissions)
            if perms and rng.random() < 0.5:
                gone = rng.choice(perms)
                perms.remove(gone)
                said.append(f"{conn_id}: user revoked {gone}")
            else:
                new = rng.choice([p for p in PERMISSIONS if p not in perms] or list(PERMISSIONS))
                perms.append(new)
                said.append(f"{conn_id}: user granted {new}")
            self.set_permissions(conn_id, perms)
        if self.removed and rng.random() < 0.5:
            back = rng.choice(sorted(self.removed))
            self.restore(back)
            said.append(f"{back}: reconnected")
        elif len(self.connections) > 1:
            gone_id = rng.choice(sorted(self.connections))
            self.remove(gone_id)
            said.append(f"{gone_id}: disconnected")
        return said

    # -- scripting ---------------------------------------------------------

    def fail_next(
        self,
        status: int | None = 500,
        *,
        headers: dict[str, str] | None = None,
        shape: str | None = None,
        delay: float = 0.0,
        error: str | None = None,
        match: str | None = None,
        times: int = 1,
        code: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with a fault instead of the normal answer.

        ``status=None`` with a ``delay`` answers normally, but late (a slow API).
        """
        with self._lock:
            self.faults.append(Fault(
                status=status, headers=headers or {}, shape=shape or self.error_shape,
                delay=delay, error=error, match=match, times=times, code=code,
            ))

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as if the hour had passed."""
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp == float("inf")}

    def count(self, method: str, path_prefix: str) -> int:
        """How many logged requests used this method and started with this path."""
        return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    # -- HTTP --------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request (the MockTransport handler); ``/_admin/`` changes the world (``etl.fakeadmin``)."""
        if is_admin(request):  # not API traffic: not logged, and no fault, latency or rate limit applies
            return answer_admin(self, request)
        try:
            return self._handle(request)
        finally:
            for hook in list(self.hooks):
                hook(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        target = path + "?" + unquote(request.url.query.decode()) if request.url.query else path
        with self._lock:
            self.requests.append((request.method, path))
            self.request_times.append((time.monotonic(), request.method, path))
            fault = self._take_fault(target)
        if self.latency and path.startswith(API_PREFIX):
            time.sleep(self.latency)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.error == "timeout":
                msg = "scripted timeout"
                raise httpx.ReadTimeout(msg, request=request)
            if fault.error == "connect":
                msg = "scripted connection failure"
                raise httpx.ConnectError(msg, request=request)
            if fault.status is not None:
                return self.error(fault.status, shape=fault.shape, headers=fault.headers, code=fault.code)
        if path == TOKEN_PATH and request.method == "POST":
            return self._token(request)
        if not path.startswith(API_PREFIX + "/"):
            return self.no_such_path()
        if not self._authorised(request):
            return self.unauthorised()
        wait = self._bucket.try_acquire() if self._bucket is not None else 0.0
        if wait:
            with self._lock:
                self.rate_limited += 1
            return self.error(429, code="RATE_LIMIT", detail="Your application has exceeded its rate limit.",
                                  headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if request.method == "GET" and path == API_PREFIX + "/connections":
            return self._list(request)
        connection_id = connection_asked(request)
        if connection_id is not None:
            return self._get(connection_id)
        return self.no_such_path()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.match is None and path == TOKEN_PATH:
                continue
            if fault.match is None or fault.match in path:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = parse_qs(request.content.decode())
        if form.get("grant_type") != ["client_credentials"]:
            return httpx.Response(400, json={"error": "unsupported_grant_type"})
        if form.get("client_id") != [self.client_id] or form.get("client_secret") != [self.client_secret]:
            return invalid_client()
        with self._lock:
            self._token_counter += 1
            token = f"fake-token-{self._token_counter}-{uuid.uuid4().hex}"
            self._tokens[token] = self.clock() + self.token_ttl
            self.issued_tokens.append(token)
        return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl})

    def _authorised(self, request: httpx.Request) -> bool:
        token = bearer_token(request)
        if token is None:
            return False
        with self._lock:
            expiry = self._tokens.get(token)
        return expiry is not None and self.clock() < expiry

    def document(self, conn: FakeConnection) -> dict[str, Any]:
        """The JSON:API resource for a connection, as Smartcar documents it."""
        return {
            "id": conn.id,
            "type": "connection",
            "attributes": {"permissions": list(conn.permissions), "vehicle": dict(conn.vehicle)},
            "relationships": {
                "vehicle": {"data": {"id": conn.vehicle_id, "type": "vehicle"}},
                "user": {"data": {"id": conn.user_id, "type": "user"}},
            },
            "meta": {"createdAt": conn.created_at, "updatedAt": conn.updated_at},
            "links": {"self": f"{API_PREFIX}/connections/{conn.id}"},
        }

    def _broken(self, conn: FakeConnection) -> httpx.Response:
        doc = self.document(conn)
        if conn.broken == "not_json":
            return httpx.Response(200, content=b'{"data": {"id": ', headers={"content-type": "application/json"})
        if conn.broken == "no_user":
            del doc["relationships"]["user"]
        elif conn.broken == "bad_permission":
            doc["attributes"]["permissions"] = [*conn.permissions, "read_vin\nread_location"]
        elif conn.broken == "wrong_id":
            doc["id"] = str(uuid.uuid4())
        elif conn.broken == "permissions_string":
            doc["attributes"]["permissions"] = ",".join(conn.permissions)
        elif conn.broken == "wrong_type":
            doc["type"] = "vehicle"
        return httpx.Response(200, json={"data": doc})

    def _get(self, connection_id: str) -> httpx.Response:
        with self._lock:
            conn = self.connections.get(connection_id)
        if conn is None:
            return self.error(404, code="not_found", detail="Connection not found.")
        if conn.raw is not None:  # as a stream: httpx would otherwise decode a gzip body right here
            headers = {"content-type": "application/json", "content-length": str(len(conn.raw)), **conn.raw_headers}
            return httpx.Response(200, headers=headers, stream=httpx.ByteStream(conn.raw))
        if conn.broken:
            return self._broken(conn)
        return httpx.Response(200, json={"data": self.document(conn)})

    def _list(self, request: httpx.Request) -> httpx.Response:
        params = request.url.params
        try:
            number = int(params.get("page[number]", "1"))
            size = int(params.get("page[size]", "10"))
        except ValueError:
            return self.error(400, code="bad_request", detail="page parameters must be integers")
        if number < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            return self.error(400, code="bad_request", detail="page out of range")
        with self._lock:
            every = list(self.connections.values())
        page = every[(number - 1) * size: number * size]
        last = pages_for(len(every), size)
        style = self.listing
        prefix = str(request.url.copy_with(path="/", query=None)).rstrip("/") if style["next"] == "absolute" else ""
        link = f"{prefix}{API_PREFIX}/connections?page[number]={{}}&page[size]={size}"
        meta: dict[str, Any] = {style["page_key"]: number, "pageSize": size}
        if style["total"]:
            meta["totalCount"] = len(every)
        body: dict[str, Any] = {"data": [self._listed(c) for c in page], "meta": meta}
        if style["next"] != "missing":
            body["links"] = {
                "self": link.format(number), "first": link.format(1), "last": link.format(last),
                "next": link.format(number + 1) if number < last else None,
                "previous": link.format(number - 1) if number > 1 else None,
            }
        return httpx.Response(200, json=body)

    def _listed(self, conn: FakeConnection) -> Any:
        if not conn.broken:
            return self.document(conn)
        doc = json.loads(self._broken(conn).content or b"null") if conn.broken != "not_json" else {"id": 7}
        return doc["data"] if isinstance(doc, dict) and "data" in doc else doc

    def unauthorised(self) -> httpx.Response:
        """The answer to an API request whose bearer token is missing, unknown or expired."""
        return self.error(401, code="unauthorized", detail="The access token is invalid or expired.")

    def no_such_path(self) -> httpx.Response:
        """Smartcar's documented answer for a path it does not serve: RESOURCE_NOT_FOUND, code PATH."""
        body = {"errors": [{"status": "404", "type": "RESOURCE_NOT_FOUND", "code": "PATH", "title": "Not Found",
                            "detail": "The requested resource does not exist."}]}
        return httpx.Response(404, json=body)

    def error(
        self,
        status: int,
        *,
        code: str | None = None,
        detail: str = "Scripted failure.",
        shape: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """An error answer in one of the shapes Smartcar (or a gateway in front of it) uses."""
        shape = shape or self.error_shape
        reason = REASONS.get(status, "Error")
        code = code or reason.lower().replace(" ", "_")
        if shape == "v3":
            body: Any = {"errors": [{"status": str(status), "code": code, "title": reason, "detail": detail}]}
            return httpx.Response(status, json=body, headers=headers)
        if shape == "v2":
            body = {"type": code.upper(), "code": "FAKE", "description": detail, "statusCode": status,
                    "requestId": str(uuid.uuid4()), "resolution": {"type": "RETRY_LATER"}}
            return httpx.Response(status, json=body, headers=headers)
        if shape == "html":
            page = f"<html><head><title>{status} {reason}</title></head><body>nginx</body></html>"
            return httpx.Response(status, text=page, headers={"content-type": "text/html", **(headers or {})})
        if shape == "empty":
            return httpx.Response(status, headers=headers)
        if shape == "other_json":  # some other service's error (a router, a gateway)
            return httpx.Response(status, json={"error": "route not found"}, headers=headers)
        if shape == "malformed_json":
            return httpx.Response(status, content=b'{"errors": [', headers={"content-type": "application/json",
                                                                             **(headers or {})})
        return httpx.Response(status, text=f"{status} {reason}", headers=headers)


def bearer_token(request: httpx.Request) -> str | None:
    """The request's bearer token, if it has one."""
    header = request.headers.get("authorization", "")
    return header[len("Bearer "):] if header.startswith("Bearer ") else None


def connection_asked(request: httpx.Request) -> str | None:
    """The connection id of a ``GET /v3/connections/{id}``; None for any other request."""
    route = request.url.path[len(API_PREFIX):] if request.url.path.startswith(API_PREFIX + "/") else ""
    if request.method == "GET" and route.startswith("/connections/") and route.count("/") == 2:
        return route.rsplit("/", 1)[1]
    return None


def invalid_client() -> httpx.Response:
    """The token endpoint's answer to a client id or secret it does not know."""
    return httpx.Response(401, json={"error": "invalid_client", "error_description": "Client authentication failed."})


def urls(root: str) -> dict[str, str]:
    """The API base and token URLs of a fake served at ``root``."""
    return {"base_url": root + API_PREFIX, "token_url": root + TOKEN_PATH}
