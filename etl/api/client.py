"""HTTP client for the Smartcar Vehicle API v3 connections endpoints.

Every response is sorted by ``classify`` and nowhere else: 200 is an answer, and
so is a 404 that is Smartcar's own word that the resource is missing
(``smartcar_not_found``); any other 404 (a proxy's page, a wrong base path)
fails that one request. 401 asks for one token renewal; 403 and 430 stop the
run; 429, 5xx, timeouts and network errors are retried by the ``RetryPolicy``;
any other status fails that one request. Error messages carry status, reason, path and
the API's error code and detail, never headers, tokens or query strings.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import re
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import httpx

from etl.api.deadline import Cancelled, Deferred, PassDeadline
from etl.api.documents import (
    UNSTORABLE_RE,
    ConnectionRecord,
    canonical_id,
    decode_json,
    parse_connection,
    parse_resource,
)
from etl.api.ratelimit import Limiter
from etl.api.retry import RetryPolicy, parse_retry_after
from etl.clock import utcnow
from etl.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    FatalApiError,
    MalformedDocumentError,
    RetriableApiError,
)

MAX_DETAIL = 200
MAX_TOTAL_COUNT = 10**9  # a totalCount beyond this is not believed (it would overflow run counters)
USER_AGENT = "smartcar-etl"
log = logging.getLogger(__name__)


class Unauthorized(AuthenticationError):
    """A 401: the token was refused (the client renews it once before giving up)."""


class TokenSource(Protocol):
    """Gives bearer tokens and renews a refused one."""

    def token(self) -> str: ...

    def renew(self, stale: str) -> str: ...

    def secrets(self) -> list[str]:
        """Every secret value this source knows (to redact from error texts)."""
        ...


def _clip(text: str) -> str:
    text = " ".join(UNSTORABLE_RE.sub(" ", text).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _scalar_text(value: Any) -> str | None:
    """A JSON scalar as clipped, printable text; None for nothing or a container."""
    if not value or not isinstance(value, str | int | float):
        return None
    return _clip(str(value))


def error_info(response: httpx.Response) -> tuple[str | None, str | None]:
    """(code, detail) from an error body: JSON:API ``errors``, the flat v2 object, OAuth, or text."""
    try:
        body: Any = decode_json(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = first.get("code") or first.get("type")
            detail = first.get("detail") or first.get("title")
        elif "error" in body:  # OAuth token endpoint
            code, detail = body.get("error"), body.get("error_description")
        else:  # v2 flat object
            kind, sub = body.get("type"), body.get("code")
            code = f"{kind}:{sub}" if kind and sub else kind or sub
            detail = body.get("description") or body.get("message")
        return _scalar_text(code), _scalar_text(detail)
    text = response.content[:2000].decode("utf-8", errors="replace")
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return None, _clip(f"HTML page: {title.group(1)}" if title else "HTML page")
    return None, _clip(text) if text.strip() else None


def redact(text: str | None, secrets: Iterable[str]) -> str | None:
    """``text`` with every secret the job knows (as sent: raw or form-encoded) replaced by ``[redacted]``."""
    if not text:
        return text
    for secret in secrets:
        for form in {secret, quote_plus(secret), quote(secret, safe="")}:
            if len(form) >= 4:
                text = text.replace(form, "[redacted]")
    return text


# Smartcar's documented 404s for a request it could not route (RESOURCE_NOT_FOUND with code PATH or
# VERSION): a wrong base URL, not a missing connection.
WRONG_PATH_CODES = frozenset({"PATH", "VERSION"})


def smartcar_not_found(response: httpx.Response) -> bool:
    """Whether a 404 is Smartcar's answer for a missing resource: a JSON:API ``errors`` array whose first
    entry has status "404" and no code of a wrong path or version. An inferred rule (Smartcar documents
    the error shape and the PATH/VERSION codes, not a body for each case): an HTML page, an empty body or
    other JSON is some other server's 404, never proof that a connection is gone."""
    try:
        body: Any = decode_json(response.content)
    except ValueError:
        return False
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return False
    first = errors[0]
    if first.get("status") not in ("404", 404):
        return False
    marks = {str(first.get(key) or "").upper().rsplit(":", 1)[-1] for key in ("type", "code")}
    return not marks & WRONG_PATH_CODES


def vehicle_rate_limited(error: ApiError) -> bool:
    """A 429 for one vehicle's limit (``RATE_LIMIT`` with code ``VEHICLE``), not the application's."""
    return error.status == 429 and (error.code or "").upper().rsplit(":", 1)[-1] == "VEHICLE"


def classify(
    response: httpx.Response,
    *,
    path: str,
    now: Callable[[], dt.datetime] = utcnow,
    secrets: Iterable[str] = (),
) -> None:
    """Return for an answer (200, Smartcar's 404); raise the error class that decides what happens next.

    The API's error code and detail go into the error with ``secrets`` redacted.
    """
    status = response.status_code
    if status == 200 or (status == 404 and smartcar_not_found(response)):
        return
    code, detail = error_info(response)
    secrets = list(secrets)
    fields: dict[str, Any] = {
        "path": path, "status": status, "reason": response.reason_phrase,
        "code": redact(code, secrets), "detail": redact(detail, secrets),
    }
    if status == 401:
        raise Unauthorized(**fields)
    if status in (403, 430):
        raise FatalApiError(kind="billing" if status == 430 else "forbidden", **fields)
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        kind = "server" if status >= 500 else "vehicle_limit" if vehicle_rate_limited(ApiError(**fields)) \
            else "rate_limited"
        raise RetriableApiError(retry_after=retry_after, kind=kind, **fields)
    if status == 404:
        fields["detail"] = "not Smartcar's answer for a missing connection (" + (
            fields["detail"] or "no error body") + "); is api.base_url right?"
        raise ApiError(kind="unrecognised_404", **fields)
    raise ApiError(**fields)


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on one request: its whole duration and the decoded size of its answer."""

    deadline: float = 330.0
    max_bytes: int = 8 * 1024 * 1024


_ENCODING_HEADERS = {b"content-encoding", b"content-length", b"transfer-encoding"}


def _decoder(encoding: str, *, path: str) -> Any:
    """A zlib decompressor for the answer's Content-Encoding; None for identity."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise ApiError(path=path, kind="http", detail=f"answer in an unsupported content-encoding {encoding[:20]!r}")


def _read_body(response: httpx.Response, *, path: str, limits: ReadLimits, deadline: float) -> bytes:
    """The answer's decoded body, read as a stream: never more than ``limits.max_bytes`` nor past ``deadline``."""
    decoder = _decoder(response.headers.get("content-encoding", ""), path=path)
    parts: list[bytes] = []
    size = 0
    # The raw stream, as the transport gives it (httpcore: at most 64 KiB a chunk). Not iter_raw():
    # a response that a MockTransport handler built from bytes counts as already read.
    for chunk in cast(httpx.SyncByteStream, response.stream):
        if time.monotonic() > deadline:
            raise RetriableApiError(path=path, kind="timeout",
                                    detail=f"no complete answer within api.request_deadline ({limits.deadline:g}s)")
        while chunk:
            if decoder is None:
                out, chunk = chunk, b""
            else:
                try:
                    out = decoder.decompress(chunk, limits.max_bytes - size + 1)
                except zlib.error:
                    raise ApiError(path=path, kind="http", detail="answer is not valid compressed data") from None
                chunk = decoder.unconsumed_tail
            size += len(out)
            if size > limits.max_bytes:
                raise ApiError(path=path, status=response.status_code, kind="too_large",
                               detail=f"answer larger than api.max_response_bytes ({limits.max_bytes} bytes)")
            parts.append(out)
    return b"".join(parts)


def send(
    http: httpx.Client, request: httpx.Request, *, path: str, limits: ReadLimits | None = None
) -> httpx.Response:
    """Send one request and read its answer within ``limits``; timeouts and network failures are retriable.

    No wait for bytes lasts longer than the client's timeout or what is left of
    the deadline; the deadline is checked whenever bytes arrive, so a server that
    trickles cannot hold a request past it. The response returned is fully read
    and already decoded.
    """
    limits = limits or ReadLimits()
    started = time.monotonic()
    deadline = started + limits.deadline
    configured = http.timeout
    request.extensions["timeout"] = httpx.Timeout(
        connect=min(configured.connect or limits.deadline, limits.deadline),
        read=min(configured.read or limits.deadline, limits.deadline),
        write=min(configured.write or limits.deadline, limits.deadline),
        pool=min(configured.pool or limits.deadline, limits.deadline),
    ).as_dict()
    try:
        response = http.direct(request.url).handle_request(request) if isinstance(http, Http) \
            else http.send(request, stream=True)
        try:
            body = _read_body(response, path=path, limits=limits, deadline=deadline)
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        raise RetriableApiError(path=path, kind="timeout", detail=type(exc).__name__) from exc
    except httpx.TransportError as exc:
        refused = _tls_refusal(exc)
        if refused is not None:  # not a blip: every request to this host would fail the same way
            raise FatalApiError(path=path, kind="tls", detail=_clip(
                f"TLS with {request.url.host} failed: {refused}; check the URL, the server's certificate and the "
                "trusted certificates (SSL_CERT_FILE)")) from exc
        raise RetriableApiError(path=path, kind="network", detail=_clip(f"{type(exc).__name__}: {exc}")) from exc
    headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _ENCODING_HEADERS]
    log.debug("%s %s: HTTP %d, %d bytes in %.3fs", request.method, path, response.status_code, len(body),
              time.monotonic() - started)
    extensions = {k: v for k, v in response.extensions.items() if k == "reason_phrase"}
    return httpx.Response(response.status_code, headers=headers, content=body, request=request,
                          extensions=extensions)


def _tls_refusal(error: BaseException) -> str | None:
    """Why TLS failed, when a transport error comes from a refused certificate or handshake (not a network blip)."""
    seen: BaseException | None = error
    for _ in range(10):  # the chain of causes, bounded
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the certificate was refused ({seen.verify_message or seen.reason or 'verify failed'})"
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return f"the handshake failed ({seen.reason or type(seen).__name__})"
        seen = seen.__cause__ or seen.__context__
    return None


def environment_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, ALL_PROXY, NO_PROXY), as httpx.Client takes it."""
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(url.host):
        return None
    return proxies.get(url.scheme) or proxies.get("all")


def check_environment_proxies() -> None:
    """Raise ConfigError (exit 2) for a proxy variable httpx cannot use, naming the variable, never its value
    (a proxy URL can carry a password)."""
    problems = []
    for scheme, value in urllib.request.getproxies().items():
        if scheme == "no":  # NO_PROXY: host names, not a URL
            continue
        name = f"{scheme.upper()}_PROXY (or {scheme}_proxy)"
        try:
            proxy = httpx.Proxy(value)
        except (ValueError, httpx.InvalidURL):
            problems.append(f"{name}: not a proxy URL httpx can use (http://, https:// or socks5://HOST:PORT)")
            continue
        if proxy.url.scheme.startswith("socks") and importlib.util.find_spec("socksio") is None:
            problems.append(f"{name}: a SOCKS proxy needs the socksio package (pip install 'httpx[socks]')")
    if problems:
        raise ConfigError(problems)


class Http(httpx.Client):
    """The pooled httpx client, and the transports that ``send`` hands requests to directly.

    Going straight to the transport skips what ``httpx.Client.send`` does per
    request and this job does not use (auth flows, redirects, cookies, event
    hooks): a quarter of a request's cost against a fast server. Requests are
    complete when they get here (``send`` sets the timeouts, the caller the
    headers); the proxy is the one the environment names for the host.
    """

    def __init__(self, *, timeout: float, concurrency: int, transport: httpx.BaseTransport | None = None) -> None:
        if transport is None:  # the environment's proxies are used: refuse a bad one now, not at the first request
            check_environment_proxies()
        self.pool_limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        super().__init__(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=self.pool_limits,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "gzip, deflate"},
            follow_redirects=False,
        )
        self.given = transport
        self.transports: dict[tuple[str, str, int | None], httpx.BaseTransport] = {}
        self._lock = threading.Lock()

    def direct(self, url: httpx.URL) -> httpx.BaseTransport:
        """The transport for ``url``: the one given (tests), else one per scheme, host and port."""
        if self.given is not None:
            return self.given
        key = (url.scheme, url.host, url.port)
        with self._lock:
            if key not in self.transports:
                self.transports[key] = httpx.HTTPTransport(limits=self.pool_limits, proxy=environment_proxy(url))
            return self.transports[key]

    def close(self) -> None:
        """Close the client and every transport it made."""
        super().close()
        with self._lock:
            for transport in self.transports.values():
                transport.close()
            self.transports.clear()


def make_http_client(
    *, timeout: float, concurrency: int, transport: httpx.BaseTransport | None = None
) -> Http:
    """One pooled httpx client shared by the token source and the API client."""
    return Http(timeout=timeout, concurrency=concurrency, transport=transport)


@dataclass(frozen=True)
class ClientOptions:
    """How a client behaves around its requests: clock, cancellation, metrics hook, rate limiter, read bounds."""

    now: Callable[[], dt.datetime] = utcnow
    cancelled: threading.Event | None = None
    on_request: Callable[[str, int | None], None] | None = None  # (outcome, status) of every request, for metrics
    limiter: Limiter | None = None
    limits: ReadLimits = ReadLimits()
    deadline: PassDeadline | None = None  # the end of the pass (sync --max-duration)


class SmartcarClient:
    """The connections endpoints, with authentication and retries; safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: TokenSource,
        http: httpx.Client,
        retry: RetryPolicy | None = None,
        options: ClientOptions = ClientOptions(),  # noqa: B008 - frozen, immutable
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.http = http
        self.retry = retry or RetryPolicy()
        self.now = options.now
        self.cancelled = options.cancelled or threading.Event()
        self.on_request = options.on_request
        self.limiter = options.limiter
        self.limits = options.limits
        self.deadline = options.deadline
        self._sent_total = 0
        self._count_lock = threading.Lock()

    @property
    def requests_sent(self) -> int:
        """How many API requests this client has sent (token requests excluded)."""
        return self._sent_total

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's validated record, or None when the API answers 404."""
        path = f"/connections/{connection_id}"
        response = self.get(path)
        if response.status_code == 404:
            return None
        try:
            body = decode_json(response.content)
        except ValueError as exc:
            raise MalformedDocumentError(path=path, status=200, detail=str(exc)) from None
        return parse_connection(body, expected_id=connection_id, path=path)

    def get(self, path: str, params: dict[str, str | int] | None = None) -> httpx.Response:
        """GET an API path with retries; renew the token once on a 401.

        Each attempt ends within ``limits.deadline``, and all of them within the
        retry policy's deadline.
        """
        used: list[str] = []
        started = self.retry.clock()

        def once() -> httpx.Response:
            if self.cancelled.is_set():
                raise Cancelled
            if self.deadline is not None and not self.deadline.allows():
                raise Deferred
            # The token first: refused credentials stop the run before it takes any of the rate budget.
            token = self.auth.token()
            if self.limiter is not None:
                waited = self.limiter.waited
                patience = self.deadline.allows if self.deadline is not None else None
                if not self.limiter.acquire(self.cancelled, patience):
                    raise Cancelled if self.cancelled.is_set() else Deferred
                if self.limiter.waited != waited:  # the wait for the rate limit may have outlasted the token
                    token = self.auth.token()
            used.append(token)
            request = httpx.Request("GET", self.base_url + path, params=params,
                                    headers={**self.http.headers, "Authorization": f"Bearer {token}"})
            with self._count_lock:
                self._sent_total += 1
            budget = min(self.limits.deadline, self.retry.remaining(started),
                         self.deadline.left() if self.deadline is not None else self.limits.deadline)
            try:
                if budget <= 0:
                    raise RetriableApiError(path=path, kind="timeout", detail="the retry deadline has passed")
                sent_at = time.monotonic()
                response = send(self.http, request, path=path, limits=replace(self.limits, deadline=budget))
                if self.deadline is not None:
                    self.deadline.record(time.monotonic() - sent_at)
                classify(response, path=path, now=self.now, secrets=[token, *self.auth.secrets()])
            except ApiError as error:
                if self.on_request is not None:
                    self.on_request(error.kind, error.status)
                if isinstance(error, RetriableApiError) and error.status == 429 and error.retry_after \
                        and self.limiter is not None and not vehicle_rate_limited(error):
                    # Every process of the application backs off, no longer than a retry would wait.
                    self.limiter.drain(min(error.retry_after, self.retry.max_retry_after))
                raise
            if self.on_request is not None:
                self.on_request("ok" if response.status_code == 200 else "not_found", response.status_code)
            return response

        patience = self.deadline.allows if self.deadline is not None else None
        try:
            return self.retry.call(once, started=started, patience=patience)
        except Unauthorized:
            self.auth.renew(used[-1])
        try:
            return self.retry.call(once, started=started, patience=patience)
        except Unauthorized as error:
            raise AuthenticationError(
                path=path, status=401, reason=error.reason, code=error.code,
                detail="refused again after renewing the token",
            ) from None

    def list_page(self, number: int, size: int) -> ListingPage:
        """One page of ``GET /connections``, its items validated one by one."""
        return listing_page(number, self.get(LISTING_PATH, params={"page[number]": number, "page[size]": size}))


LISTING_PATH = "/connections"


def listing_page(number: int, response: httpx.Response) -> ListingPage:
    """The listing's page ``number`` from the API's answer, its items validated one by one."""
    path = LISTING_PATH
    if response.status_code != 200:  # the listing itself cannot be missing
        raise ApiError(path=path, status=response.status_code, reason=response.reason_phrase,
                       detail=f"page {number}: the listing answered {response.status_code}")
    try:
        body = decode_json(response.content)
    except ValueError as exc:
        raise MalformedDocumentError(path=path, status=200, detail=f"page {number}: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise MalformedDocumentError(path=path, status=200, detail=f"page {number}: data is not an array")
    page = ListingPage(number=number, body=body)
    for item in body["data"]:
        try:
            page.records.append(parse_resource(item, expected_id=None, path=path))
        except MalformedDocumentError as error:
            item_id = canonical_id(item.get("id")) if isinstance(item, dict) else None
            if item_id is None:
                page.unreadable.append(str(error))
            else:
                page.malformed.append((item_id, error))
    return page


@dataclass
class ListingPage:
    """One page of the listing: valid records, items with an id but invalid, items with no readable id."""

    number: int
    body: dict[str, Any]
    records: list[ConnectionRecord] = field(default_factory=list)
    malformed: list[tuple[str, MalformedDocumentError]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        """Every readable id on the page, in order."""
        return [r.connection_id for r in self.records] + [i for i, _ in self.malformed]

    @property
    def total_count(self) -> int | None:
        """``meta.totalCount`` when the API gives it as a plausible whole number (0 to a billion)."""
        total = _object(self.body.get("meta")).get("totalCount")
        plausible = isinstance(total, int) and not isinstance(total, bool) and 0 <= total <= MAX_TOTAL_COUNT
        return total if plausible else None


class Paginator:
    """Page-number paging over the listing that cannot loop forever.

    After each page it decides whether there is another: ``links.next`` (absolute,
    relative, or null) when the API gives it, else ``meta.totalCount``, else a
    full page. It raises MalformedDocumentError when the API answers another
    page than the one asked for (``meta.page`` or ``meta.pageNumber``), when
    ``links.next`` points back, when a page repeats the previous one, or when
    there are more pages than ``totalCount`` allows.
    """

    def __init__(self, *, size: int, start: int = 1, max_pages: int = 1_000_000) -> None:
        self.size = size
        self.number = start
        self.max_pages = max_pages
        self.total: int | None = None
        self._previous_ids: list[str] | None = None

    def advance(self, page: ListingPage) -> bool:
        """Check ``page`` (the one just fetched); move to the next and return True if there is one."""
        path = "/connections"
        meta, links = _object(page.body.get("meta")), _object(page.body.get("links"))
        reported = meta.get("page", meta.get("pageNumber"))
        if isinstance(reported, int) and not isinstance(reported, bool) and reported != self.number:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"asked for page {self.number}, the API answered page {reported}")
        ids = page.ids
        if ids and ids == self._previous_ids:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"page {self.number} repeats page {self.number - 1}")
        self._previous_ids = ids
        total = page.total_count
        if total is not None:
            self.total = total
            if self.number > max(1, -(-total // self.size)) + 1:
                raise MalformedDocumentError(path=path, status=200,
                                             detail=f"page {self.number} is past totalCount {total}")
        if not page.body["data"]:
            return False
        next_page = self.number + 1
        if "next" in links:
            if not links["next"]:
                return False
            linked = _page_number(str(links["next"]))
            if linked is not None and linked <= self.number:
                raise MalformedDocumentError(path=path, status=200,
                                             detail=f"links.next of page {self.number} points to page {linked}")
            next_page = linked or next_page
        elif self.total is not None:
            if self.number * self.size >= self.total:
                return False
        elif len(page.body["data"]) < self.size:
            return False
        if next_page - self.number > 1 or next_page > self.max_pages:
            raise MalformedDocumentError(path=path, status=200,
                                         detail=f"page {self.number} points to page {next_page}: runaway paging")
        self.number = next_page
        return True


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _page_number(link: str) -> int | None:
    """``page[number]`` of a next link (absolute or relative); None if it has none."""
    values = parse_qs(urlsplit(link).query).get("page[number]")
    try:
        return int(values[0]) if values else None
    except ValueError:
        return None
