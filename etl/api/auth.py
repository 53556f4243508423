"""Bearer tokens: a ready token, or client credentials cached and renewed before expiry."""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from etl.api.answers import Unauthorized, classify
from etl.api.documents import decode_json
from etl.api.retry import RetryPolicy
from etl.api.transport import ReadLimits, send
from etl.config import ApiConfig, Secret
from etl.errors import ApiError, AuthenticationError, RetriableApiError

DEFAULT_EXPIRES_IN = 3600
MAX_TOKEN_LENGTH = 8192
TOKEN_RE = re.compile(rf"[\x21-\x7e]{{1,{MAX_TOKEN_LENGTH}}}")
RENEW_MARGIN_SECONDS = 60.0  # a token is renewed this long before it expires, or sooner for a short one:
RENEW_SHARE = 0.25  # at most this share of its lifetime before (a 30 s token is used for 22.5 s)


def renew_margin(lifetime: float) -> float:
    """How long before its expiry a token of ``lifetime`` seconds is renewed: 60 s, less for a short one."""
    return min(RENEW_MARGIN_SECONDS, RENEW_SHARE * lifetime)


@dataclass(frozen=True)
class _Cached:
    """A token, and when (on the source's clock) it is to be renewed."""

    token: str
    renew_at: float


# Tokens kept across the passes of one process (a daemon asks for one when the last is about to expire,
# not at every pass), per token endpoint, client id, client secret (as a digest) and clock.
_CacheKey = tuple[str, str, str, Callable[[], float]]
_cache: dict[_CacheKey, _Cached] = {}
_cache_lock = threading.Lock()


def clear_token_cache() -> None:
    """Forget every cached token (tests; a process that must not reuse what it was given)."""
    with _cache_lock:
        _cache.clear()


class StaticToken:
    """A ready bearer token (SMARTCAR_ACCESS_TOKEN); it cannot be renewed."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def token(self) -> str:
        """The token."""
        return self._token.get()

    def secrets(self) -> list[str]:
        """The token itself."""
        return [self._token.get()]

    def renew(self, stale: str) -> str:
        """A refused ready token cannot be renewed: the run stops."""
        raise AuthenticationError(
            path="(access token)", status=401,
            detail="the ready access token was refused and cannot be renewed "
                   "(set a new SMARTCAR_ACCESS_TOKEN, or client credentials)",
        )


class ClientCredentials:
    """OAuth 2.0 client-credentials tokens, renewed shortly before expiry (``renew_margin``).

    The token is kept for the process (``_cache``): another instance with the same endpoint, credentials
    and clock, as the next pass of a daemon builds, uses it while it is valid.
    """

    def __init__(
        self,
        *,
        http: httpx.Client,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.path = urlsplit(token_url).path or "/"
        self.client_id = client_id
        self._secret = client_secret
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.limits = ReadLimits()  # bounds on each token request; ``token_source`` sets the configured ones
        self._lock = threading.Lock()
        digest = hashlib.sha256(client_secret.get().encode()).hexdigest()
        self._key: _CacheKey = (token_url, client_id, digest, clock)

    def _cached(self) -> _Cached | None:
        with _cache_lock:
            return _cache.get(self._key)

    def token(self) -> str:
        """A valid cached token, fetching a new one when none is cached or it is about to expire."""
        with self._lock:
            cached = self._cached()
            if cached is not None and self.clock() < cached.renew_at:
                return cached.token
            return self._fetch()

    def secrets(self) -> list[str]:
        """The client secret and the current token."""
        cached = self._cached()
        return [self._secret.get()] + ([cached.token] if cached is not None else [])

    def renew(self, stale: str) -> str:
        """Replace a token the API refused (once, even if several threads ask); the refused one is forgotten."""
        with self._lock:
            with _cache_lock:
                cached = _cache.get(self._key)
                if cached is not None and cached.token != stale:
                    return cached.token  # another thread has renewed it
                _cache.pop(self._key, None)  # refused: no later pass uses it, even if no new one comes
            return self._fetch()

    def _fetch(self) -> str:
        try:
            token, expires_in = self.retry.call(self._request_once)
        except RetriableApiError as error:
            raise AuthenticationError(
                path=self.path, status=error.status, reason=error.reason,
                detail=f"token endpoint unavailable after {self.retry.max_attempts} attempts ({error.kind})",
            ) from error
        except ApiError as error:
            if isinstance(error, AuthenticationError):
                raise
            raise AuthenticationError(
                path=self.path, status=error.status, reason=error.reason, code=error.code,
                detail=error.detail,
            ) from error
        with _cache_lock:
            _cache[self._key] = _Cached(token, self.clock() + expires_in - renew_margin(expires_in))
        return token

    def _request_once(self) -> tuple[str, float]:
        request = self.http.build_request(
            "POST",
            self.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._secret.get(),
            },
        )
        response = send(self.http, request, path=self.path, limits=self.limits)
        try:
            classify(response, path=self.path, secrets=[self._secret.get()])
        except Unauthorized as error:  # at the token endpoint a 401 means bad credentials
            raise AuthenticationError(
                path=self.path, status=401, reason=error.reason, code=error.code, detail=error.detail
            ) from None
        if response.status_code != 200:
            raise AuthenticationError(path=self.path, status=response.status_code, reason=response.reason_phrase)
        try:
            body: Any = decode_json(response.content)
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthenticationError(path=self.path, status=200, detail="answer has no access_token")
        if not TOKEN_RE.fullmatch(token):  # it goes into a header: printable ASCII, bounded
            raise AuthenticationError(path=self.path, status=200, detail="answer's access_token is not a usable "
                                      f"bearer token (printable ASCII, at most {MAX_TOKEN_LENGTH} characters)")
        expires_in = body.get("expires_in", DEFAULT_EXPIRES_IN)
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in <= 86400:
            expires_in = DEFAULT_EXPIRES_IN
        return token, float(expires_in)


def token_source(api: ApiConfig, *, http: httpx.Client, retry: RetryPolicy) -> StaticToken | ClientCredentials:
    """Client credentials when configured, else the ready token; ConfigError if neither."""
    api.require_credentials()
    if api.client_id and api.client_secret:
        source = ClientCredentials(
            http=http, token_url=api.token_url, client_id=api.client_id, client_secret=api.client_secret, retry=retry,
        )
        source.limits = api.read_limits()
        return source
    assert api.access_token is not None
    return StaticToken(api.access_token)
