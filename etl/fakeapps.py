"""Several applications of the bundled fake Smartcar API behind one address, as Smartcar serves them all from
one host and tells them apart by their credentials.

``FakeApplications`` holds a ``FakeApi`` per named application (its own client id and secret, connections,
token bucket and request log) and hands each request to one of them:

- ``POST /oauth2/token``: by the form's ``client_id`` (one no application has: ``invalid_client``);
- ``/v3/...``: by the bearer token, to the application that issued it (a token none issued: 401). A
  ``GET /v3/connections/{id}`` of another application's connection is answered as the token's application
  answers it (Smartcar's 404: not its connection) and recorded in ``foreign_requests``;
- ``/_admin/...``: to the application named by ``application=``, else to the one that has ``connection=``,
  else to the first (so ``add`` goes to ``application=``, by default the first); an unknown name is 400.

``serve`` (``etl.fakeapi``) puts it on loopback like a single ``FakeApi``.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs

import httpx

from etl.api.documents import canonical_id
from etl.fakeadmin import AdminError, admin_verb, answer_admin, is_admin
from etl.fakeapi import API_PREFIX, TOKEN_PATH, FakeApi, bearer_token, connection_asked, invalid_client, urls

NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")


class ForeignRequest(NamedTuple):
    """A request made with one application's token for a connection of another application."""

    application: str  # whose token asked
    connection_id: str
    owner: str  # the application that has the connection


class FakeApplications:
    """Several named ``FakeApi`` applications behind one ``handle``, each with its own token bucket."""

    def __init__(
        self,
        names: Iterable[str],
        *,
        rate_limit: tuple[float, float] | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rate_limit`` (capacity, refills per second) and ``latency`` are each application's, as in ``FakeApi``;
        application NAME's client id is ``fake-client-NAME``."""
        self.names = list(names)
        bad = [name for name in self.names if not NAME_RE.fullmatch(name)]
        if not self.names or bad or len(set(self.names)) != len(self.names):
            msg = f"application names must be distinct, of a-z, 0-9 and inner hyphens, and at least one: {bad}"
            raise ValueError(msg)
        self.rate_limit = rate_limit
        self.fakes: dict[str, FakeApi] = {
            name: FakeApi(client_id=f"fake-client-{name}", client_secret=f"fake-client-secret-{name}",
                          rate_limit=rate_limit, latency=latency, clock=clock)
            for name in self.names
        }
        self.foreign_requests: list[ForeignRequest] = []
        self.unrouted: list[tuple[str, str]] = []  # (method, path) of requests no application was given
        self._by_client = {fake.client_id: name for name, fake in self.fakes.items()}
        self._issuers: dict[str, str] = {}  # access token -> the application that issued it
        self._seen = dict.fromkeys(self.names, 0)  # how much of each fake's issued_tokens is in _issuers
        self._lock = threading.Lock()
        self._admin_lock = threading.Lock()  # an admin change checks every application, then changes one

    @classmethod
    def numbered(
        cls,
        count: int,
        *,
        rate_limit: tuple[float, float] | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> FakeApplications:
        """``count`` applications named ``app-1`` ... ``app-N``."""
        return cls([f"app-{n}" for n in range(1, count + 1)], rate_limit=rate_limit, latency=latency, clock=clock)

    # -- the worlds ------------------------------------------------------------------------------------------------

    def populate(self, count: int, *, seed: int = 0) -> dict[str, list[str]]:
        """Give each application ``count`` connections (the same seed, the same worlds); returns their ids.

        Each application's world comes from its own seed; an id that another application has already (or
        that two would get) is a ValueError, and then no application is changed.
        """
        made = {}
        for name in self.names:
            scratch = FakeApi()
            made[name] = (scratch, scratch.populate(count, seed=_seed(seed, name)))
        held = {cid: name for name, fake in self.fakes.items() for cid in [*fake.connections, *fake.removed]}
        for name, (_, ids) in made.items():
            clashes = [cid for cid in ids if held.setdefault(cid, name) != name]
            if clashes:
                msg = f"connection {clashes[0]} of {name} is {held[clashes[0]]}'s already"
                raise ValueError(msg)
        for name, (scratch, _) in made.items():
            self.fakes[name].connections.update(scratch.connections)
        return {name: ids for name, (_, ids) in made.items()}

    def owner(self, connection_id: str) -> str | None:
        """The application that has this connection (connected or removed); None if none has."""
        wanted = {connection_id, canonical_id(connection_id) or connection_id}
        for name, fake in self.fakes.items():
            if any(cid in fake.connections or cid in fake.removed for cid in wanted):
                return name
        return None

    @property
    def rate_limited(self) -> int:
        """The 429s every application's bucket has answered, together."""
        return sum(fake.rate_limited for fake in self.fakes.values())

    def request_counts(self) -> dict[str, int]:
        """How many requests (token and API) each application has answered."""
        return {name: len(fake.requests) for name, fake in self.fakes.items()}

    def environment(self, root: str) -> dict[str, str]:
        """The variables that point the job at these applications served at ``root``, in printing order."""
        u = urls(root)
        env = {"SMARTCAR_API_BASE_URL": u["base_url"], "SMARTCAR_TOKEN_URL": u["token_url"]}
        for name, fake in self.fakes.items():
            key = name.upper().replace("-", "_")
            prefix, secret = f"SMARTCAR_ETL_APPLICATIONS_{key}_", f"FAKE_{key}_CLIENT_SECRET"
            env |= {prefix + "CLIENT_ID": fake.client_id, prefix + "CLIENT_SECRET_VARIABLE": secret,
                    secret: fake.client_secret}
            if self.rate_limit is not None:
                capacity, per_second = self.rate_limit
                env |= {prefix + "RATE_LIMIT_CAPACITY": f"{capacity:.9g}",
                        prefix + "RATE_LIMIT_PER_MINUTE": f"{per_second * 60:.9g}"}
        return env

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request with the application it is for (the MockTransport handler)."""
        if is_admin(request):
            return self._admin(request)
        name = self._application_of(request)
        if name is None:
            return self._unrouted(request)
        asked = connection_asked(request)
        owner = self.owner(asked) if asked is not None else None
        if asked is not None and owner is not None and owner != name:
            with self._lock:
                self.foreign_requests.append(ForeignRequest(name, asked, owner))
        return self.fakes[name].handle(request)

    def _application_of(self, request: httpx.Request) -> str | None:
        path = request.url.path
        if path == TOKEN_PATH and request.method == "POST":
            client_id = parse_qs(request.content.decode(errors="replace")).get("client_id", [""])[0]
            return self._by_client.get(client_id)
        token = bearer_token(request) if path.startswith(API_PREFIX + "/") else None
        return self._issuer(token) if token is not None else None

    def _issuer(self, token: str) -> str | None:
        with self._lock:
            if token not in self._issuers:  # take in the tokens issued since the last look
                for name, fake in self.fakes.items():
                    issued = fake.issued_tokens[self._seen[name]:]
                    self._issuers.update(dict.fromkeys(issued, name))
                    self._seen[name] += len(issued)
            return self._issuers.get(token)

    def _unrouted(self, request: httpx.Request) -> httpx.Response:
        """What one fake answers a request it cannot place: an unknown client, an unknown token, a wrong path."""
        with self._lock:
            self.unrouted.append((request.method, request.url.path))
        first = self.fakes[self.names[0]]
        if request.url.path == TOKEN_PATH and request.method == "POST":
            return invalid_client()
        if request.url.path.startswith(API_PREFIX + "/"):
            return first.unauthorised()
        return first.no_such_path()

    def _admin(self, request: httpx.Request) -> httpx.Response:
        try:
            verb = admin_verb(request)  # 403, 404, 405 before anything about applications
            with self._admin_lock:
                return answer_admin(self.fakes[self._admin_target(verb, request.url.params)], request)
        except AdminError as error:
            return error.response()

    def _admin_target(self, verb: str, params: httpx.QueryParams) -> str:
        named = params.get("application")
        if named is not None and named not in self.fakes:
            shown = ", ".join(self.names) if len(self.names) <= 5 else f"{self.names[0]} ... {self.names[-1]}"
            raise AdminError(400, f"application={named[:60]!r} is not one of the applications ({shown})")
        given = params.get("connection")
        owner = self.owner(given) if given is not None else None
        if verb == "add" and owner is not None:  # no id in two applications
            raise AdminError(409, f"connection {given} exists already (in {owner})")
        return named or owner or self.names[0]


def ids_file_for(path: str, name: str) -> str:
    """Application NAME's ids file beside ``path``: ``ids.txt`` -> ``ids-NAME.txt``, ``ids`` -> ``ids-NAME``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{name}{p.suffix}"))


def _seed(seed: int, name: str) -> int:
    """Each application's own seed, from the world's seed and its name."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "big")
