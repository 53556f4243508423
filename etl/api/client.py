"""The client of the Smartcar Vehicle API v3 connections endpoints.

A GET is a stack of small named steps, in the spirit of ``httpx.Client.send``:

- ``get``: the 401 renewal, in one place: on a refused token, renew it once and try again;
- ``_retried``: the retry policy around one attempt (backoff, ``Retry-After``, the deadlines);
- ``_attempt``: admit (the pass allows a request, the rate budget gives a token), build, send once
  (``etl.api.transport.send``), sort the answer (``etl.api.answers.classify``) and record it.

What an answer means lives in ``etl.api.answers``, reading it within bounds in
``etl.api.transport``, and the listing's pages and paginator in ``etl.api.listing``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import httpx

from etl.api.answers import Unauthorized, classify, vehicle_rate_limited
from etl.api.deadline import Cancelled, Deferred, PassDeadline
from etl.api.documents import ConnectionRecord, decode_json, parse_connection
from etl.api.listing import LISTING_PATH, ListingPage, listing_page
from etl.api.ratelimit import Limiter
from etl.api.retry import RetryPolicy
from etl.api.transport import ReadLimits, send
from etl.clock import utcnow
from etl.errors import ApiError, AuthenticationError, MalformedDocumentError, RetriableApiError

Params = dict[str, str | int] | None


class TokenSource(Protocol):
    """Gives bearer tokens and renews a refused one."""

    def token(self) -> str: ...

    def renew(self, stale: str) -> str: ...

    def secrets(self) -> list[str]:
        """Every secret value this source knows (to redact from error texts)."""
        ...


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

    def may_send(self) -> bool:
        """Whether a request may start: the pass is not stopped, and an answer could come before its end."""
        return not self.cancelled.is_set() and (self.deadline is None or self.deadline.allows())

    def get_connection(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's validated record, or None when the API answers (Smartcar's) 404."""
        path = f"/connections/{connection_id}"
        response = self.get(path)
        if response.status_code == 404:
            return None
        try:
            body = decode_json(response.content)
        except ValueError as exc:
            raise MalformedDocumentError(path=path, status=200, detail=str(exc)) from None
        return parse_connection(body, expected_id=connection_id, path=path)

    def list_page(self, number: int, size: int) -> ListingPage:
        """One page of ``GET /connections``, its items validated one by one."""
        return listing_page(number, self.get(LISTING_PATH, params={"page[number]": number, "page[size]": size}))

    def get(self, path: str, params: Params = None) -> httpx.Response:
        """GET an API path with retries; a refused token is renewed once, and the request tried again.

        Each attempt ends within ``limits.deadline``, and all of them within the retry policy's deadline.
        """
        started = self.retry.clock()
        try:
            return self._retried(path, params, started)
        except Unauthorized as refused:
            self.auth.renew(refused.token or "")
        try:
            return self._retried(path, params, started)
        except Unauthorized as error:
            raise AuthenticationError(path=path, status=401, reason=error.reason, code=error.code,
                                      detail="refused again after renewing the token") from None

    def _retried(self, path: str, params: Params, started: float) -> httpx.Response:
        """One attempt, retried as the policy says; a retry that would end past the pass's end is deferred."""
        patience = self.deadline.allows if self.deadline is not None else None
        return self.retry.call(lambda: self._attempt(path, params, started), started=started, patience=patience)

    def _attempt(self, path: str, params: Params, started: float) -> httpx.Response:
        """Admit, build, send once, sort the answer, record it."""
        token = self._admit()
        request = httpx.Request("GET", self.base_url + path, params=params,
                                headers={**self.http.headers, "Authorization": f"Bearer {token}"})
        with self._count_lock:
            self._sent_total += 1
        try:
            response = self._send_once(request, path, started)
            classify(response, path=path, now=self.now, secrets=[token, *self.auth.secrets()])
        except ApiError as error:
            if isinstance(error, Unauthorized):
                error.token = token
            self._record_failure(error)
            raise
        if self.on_request is not None:
            self.on_request("ok" if response.status_code == 200 else "not_found", response.status_code)
        return response

    def _admit(self) -> str:
        """Wait until a request may go (the pass allows it, the rate budget gives a token); the bearer token."""
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
        return token

    def _send_once(self, request: httpx.Request, path: str, started: float) -> httpx.Response:
        """Send the request with what is left of its deadlines (the request's, the retries', the pass's)."""
        left = min(self.limits.deadline, self.retry.remaining(started),
                   self.deadline.left() if self.deadline is not None else self.limits.deadline)
        if left <= 0:
            raise RetriableApiError(path=path, kind="timeout", detail="the retry deadline has passed")
        sent_at = time.monotonic()
        response = send(self.http, request, path=path, limits=replace(self.limits, deadline=left))
        if self.deadline is not None:
            self.deadline.record(time.monotonic() - sent_at)
        return response

    def _record_failure(self, error: ApiError) -> None:
        """Count a failed request; the application's own 429 empties the shared rate budget."""
        if self.on_request is not None:
            self.on_request(error.kind, error.status)
        if isinstance(error, RetriableApiError) and error.status == 429 and error.retry_after \
                and self.limiter is not None and not vehicle_rate_limited(error):
            # Every process of the application backs off, no longer than a retry would wait.
            self.limiter.drain(min(error.retry_after, self.retry.max_retry_after))

