"""Sending one request and reading its answer within bounds; the pooled httpx client.

``send`` goes through ``httpx.Client.send`` and reads the answer as a stream: never more than
``api.max_response_bytes`` decoded, never past the request's deadline. Timeouts and network failures
are retriable; a refused TLS certificate or handshake is not (every request to that host would fail
the same way).
"""

from __future__ import annotations

import importlib.util
import logging
import ssl
import time
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any, cast

import httpx

from etl.api.answers import _clip
from etl.config import ApiConfig
from etl.errors import ApiError, ConfigError, FatalApiError, RetriableApiError

USER_AGENT = "smartcar-etl"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on one request: its whole duration and the decoded size of its answer (defaults: the config's)."""

    deadline: float = ApiConfig.request_deadline_seconds
    max_bytes: int = ApiConfig.max_response_bytes


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
    compressed = False  # compressed bytes came (an empty body in an encoding is just empty)
    # The raw stream, as the transport gives it (httpcore: at most 64 KiB a chunk). Not iter_raw():
    # a response that a MockTransport handler built from bytes counts as already read.
    for chunk in cast(httpx.SyncByteStream, response.stream):
        if time.monotonic() > deadline:
            raise RetriableApiError(path=path, kind="timeout",
                                    detail=f"no complete answer within api.request_deadline ({limits.deadline:g}s)")
        if decoder is not None:
            compressed = compressed or bool(chunk)
            # At most one byte past the bound: compressed input left unread (a bomb) is refused just below.
            try:
                chunk = decoder.decompress(chunk, limits.max_bytes - size + 1)
            except zlib.error:
                raise ApiError(path=path, kind="http", detail="answer is not valid compressed data") from None
        size += len(chunk)
        if size > limits.max_bytes:
            raise ApiError(path=path, status=response.status_code, kind="too_large",
                           detail=f"answer larger than api.max_response_bytes ({limits.max_bytes} bytes)")
        parts.append(chunk)
    if compressed:
        _check_end(decoder, path=path)
    return b"".join(parts)


def _check_end(decoder: Any, *, path: str) -> None:
    """Raise unless the compressed data ended (its checksum read) with nothing after it: an answer cut short
    (a connection closed early) is retriable; bytes after the end are not an answer."""
    if not decoder.eof:
        raise RetriableApiError(path=path, kind="network", detail="the answer ended before its compressed data did")
    if decoder.unused_data:
        raise ApiError(path=path, kind="http", detail="answer has bytes after the end of its compressed data")


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
        response = http.send(request, stream=True)
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


NO_COOKIES = "the job's HTTP client keeps no cookies"


class _Cookieless(httpx.Cookies):
    """Cookies that stay empty: nothing is kept of an answer, and none can be set."""

    def extract_cookies(self, response: httpx.Response) -> None:
        """Keep nothing (httpx wraps every answer and its request for ``http.cookiejar`` to read them)."""

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        """Refuse: the job sends no cookie."""
        raise TypeError(NO_COOKIES)

    def update(self, cookies: Any = None) -> None:  # type: ignore[override]
        """Refuse: the job sends no cookie."""
        raise TypeError(NO_COOKIES)


class ApiClient(httpx.Client):
    """An ``httpx.Client`` that keeps no cookies: the API sets none and the job sends none.

    httpx reads every answer into its cookie jar through ``Client.cookies``, which cost about 50 µs a request
    (urllib's request wrapper), about 6 % of a pass against a fast local API (py-spy, docs/benchmarks.md).
    """

    def __init__(self, **options: Any) -> None:
        if "cookies" in options:
            raise TypeError(NO_COOKIES)
        self._cookieless = _Cookieless()
        super().__init__(**options)

    @property
    def cookies(self) -> httpx.Cookies:
        """Always empty."""
        return self._cookieless

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError(NO_COOKIES)


def make_http_client(
    *, timeout: float, concurrency: int, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """One pooled httpx client shared by the token source and the API client; the environment's proxy
    variables apply (a bad one is refused now, not at the first request)."""
    if transport is None:
        check_environment_proxies()
    # A connection for each request in flight, one for the token and one for the page read ahead; every one of
    # them is kept open for the next request (keep-alive is bounded by max_connections).
    pool = httpx.Limits(max_connections=concurrency + 2)
    return ApiClient(
        timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)), limits=pool, transport=transport,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json", "Accept-Encoding": "gzip, deflate"},
        follow_redirects=False,
    )
