"""HTTP client for the Smartcar Vehicle API v3 connections endpoints.

Every response is sorted by ``classify`` and nowhere else: 200 and 404 are
answers; 401 asks for one token renewal; 403 and 430 stop the run; 429, 5xx,
timeouts and network errors are retried by the ``RetryPolicy``; any other
status fails that one request. Error messages carry status, reason, path and
the API's error code and detail, never headers, tokens or query strings.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import httpx

from etl.api.documents import ConnectionRecord, canonical_id, parse_connection, parse_resource
from etl.api.ratelimit import TokenBucket
from etl.api.retry import RetryPolicy, parse_retry_after
from etl.errors import (
    ApiError,
    AuthenticationError,
    FatalApiError,
    MalformedDocumentError,
    RetriableApiError,
)

MAX_DETAIL = 200
USER_AGENT = "smartcar-etl"


class Unauthorized(AuthenticationError):
    """A 401: the token was refused (the client renews it once before giving up)."""


class Cancelled(Exception):
    """The run was cancelled while this request waited or was about to be sent."""


class TokenSource(Protocol):
    """Gives bearer tokens and renews a refused one."""

    def token(self) -> str: ...

    def renew(self, stale: str) -> str: ...


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def error_info(response: httpx.Response) -> tuple[str | None, str | None]:
    """(code, detail) from an error body: JSON:API ``errors``, the flat v2 object, OAuth, or text."""
    try:
        body: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
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
        return (
            _clip(str(code)) if code else None,
            _clip(str(detail)) if detail else None,
        )
    text = response.content[:2000].decode("utf-8", errors="replace")
    content_type = response.headers.get("content-type", "").split(";")[0].strip()
    if "html" in content_type or text.lstrip().startswith("<"):
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return None, _clip(f"HTML page: {title.group(1)}" if title else "HTML page")
    return None, _clip(text) if text.strip() else None


def classify(response: httpx.Response, *, path: str, now: Callable[[], dt.datetime] = utcnow) -> None:
    """Return for an answer (200, 404); raise the error class that decides what happens next."""
    status = response.status_code
    if status in (200, 404):
        return
    code, detail = error_info(response)
    fields: dict[str, Any] = {
        "path": path, "status": status, "reason": response.reason_phrase, "code": code, "detail": detail,
    }
    if status == 401:
        raise Unauthorized(**fields)
    if status in (403, 430):
        raise FatalApiError(kind="billing" if status == 430 else "forbidden", **fields)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"), now=now)
        raise RetriableApiError(retry_after=retry_after, kind="rate_limited", **fields)
    if status >= 500:
        raise RetriableApiError(kind="server", **fields)
    raise ApiError(**fields)


def send(http: httpx.Client, request: httpx.Request, *, path: str) -> httpx.Response:
    """Send one request; timeouts and network failures become RetriableApiError."""
    try:
        return http.send(request)
    except httpx.TimeoutException as exc:
        raise RetriableApiError(path=path, kind="timeout", detail=type(exc).__name__) from exc
    except httpx.TransportError as exc:
        raise RetriableApiError(path=path, kind="network", detail=_clip(f"{type(exc).__name__}: {exc}")) from exc


def make_http_client(
    *, timeout: float, concurrency: int, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """One pooled httpx client shared by the token source and the API client."""
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
        limits=limits,
        transport=transport,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        follow_redirects=False,
    )


class SmartcarClient:
    """The connections endpoints, with authentication and retries; safe to share between threads."""

    def __init__(
        self,
        *,
        base_url: str,
        auth: TokenSource,
        http: httpx.Client,
        retry: RetryPolicy | None = None,
        now: Callable[[], dt.datetime] = utcnow,
        cancelled: threading.Event | None = None,
        on_request: Callable[[str, int | None], None] | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.http = http
        self.retry = retry or RetryPolicy()
        self.now = now
        self.cancelled = cancelled or threading.Event()
        self.on_request = on_request  # (outcome, status) of every request sent, for metrics
        self.limiter = limiter
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
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedDocumentError(path=path, status=200, detail="body is not JSON") from exc
        return parse_connection(body, expected_id=connection_id, path=path)

    def get(self, path: str, params: dict[str, str | int] | None = None) -> httpx.Response:
        """GET an API path with retries; renew the token once on a 401."""
        used: list[str] = []

        def once() -> httpx.Response:
            if self.cancelled.is_set():
                raise Cancelled
            if self.limiter is not None and not self.limiter.acquire(self.cancelled):
                raise Cancelled
            token = self.auth.token()
            used.append(token)
            request = self.http.build_request(
                "GET", self.base_url + path, params=params, headers={"Authorization": f"Bearer {token}"}
            )
            with self._count_lock:
                self._sent_total += 1
            try:
                response = send(self.http, request, path=path)
                classify(response, path=path, now=self.now)
            except ApiError as error:
                if self.on_request is not None:
                    self.on_request(error.kind, error.status)
                raise
            if self.on_request is not None:
                self.on_request("ok" if response.status_code == 200 else "not_found", response.status_code)
            return response

        try:
            return self.retry.call(once)
        except Unauthorized:
            self.auth.renew(used[-1])
        try:
            return self.retry.call(once)
        except Unauthorized as error:
            raise AuthenticationError(
                path=path, status=401, reason=error.reason, code=error.code,
                detail="refused again after renewing the token",
            ) from None

    def list_page(self, number: int, size: int) -> ListingPage:
        """One page of ``GET /connections``, its items validated one by one."""
        path = "/connections"
        response = self.get(path, params={"page[number]": number, "page[size]": size})
        try:
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedDocumentError(path=path, status=200, detail=f"page {number}: body is not JSON") from exc
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
        """``meta.totalCount`` when the API gives it as a whole number."""
        total = _object(self.body.get("meta")).get("totalCount")
        return total if isinstance(total, int) and not isinstance(total, bool) else None


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
