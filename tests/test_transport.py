"""Sending one request (``etl.api.transport``): the pooled client, the environment's proxy, bounded reads."""

from __future__ import annotations

import gzip
import http.server
import re
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from etl.api.transport import ApiClient, ReadLimits, make_http_client, send
from etl.errors import ConfigError

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                   "NO_PROXY")


def test_requests_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy on loopback that notes the first line it is sent, and hangs up."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            seen.append(conn.recv(4096).split(b"\r\n", 1)[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
    http = make_http_client(timeout=5, concurrency=1)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the proxy hangs up: any network error
            send(http, httpx.Request("GET", "https://vehicle.api.smartcar.com/v3/connections"), path="/connections")
    finally:
        http.close()
        thread.join(timeout=5)
        listener.close()
    assert seen == [b"CONNECT vehicle.api.smartcar.com:443 HTTP/1.1"]


@pytest.mark.parametrize("value", ["garbage", "ftp://proxy:21", "http://user:s3cret@[::1", "http://a\x01b:3128"])
def test_a_proxy_variable_httpx_cannot_use_is_a_config_error_that_keeps_its_secret(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from etl.errors import ConfigError

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", value)
    with pytest.raises(ConfigError) as caught:
        make_http_client(timeout=5, concurrency=1)
    assert "HTTPS_PROXY" in str(caught.value) and caught.value.exit_code == 2
    assert "s3cret" not in str(caught.value) and value not in str(caught.value)
    make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(lambda r: httpx.Response(200))).close()


# -- a refused TLS certificate or handshake: fatal, and says why; anything else: a retriable network error --

def ssl_error(kind: type[ssl.SSLError] = ssl.SSLError, *, reason: str | None = None,
              verify_message: str | None = None) -> ssl.SSLError:
    """An SSL error with the attributes _ssl.c always sets (None when it has nothing to say)."""
    error = kind(1, "[SSL] as OpenSSL puts it")
    error.reason, error.library = reason, None  # type: ignore[assignment]
    if isinstance(error, ssl.SSLCertVerificationError):
        error.verify_message, error.verify_code = verify_message, 18  # type: ignore[assignment]
    return error


def chained(cause: BaseException, depth: int) -> BaseException:
    """``cause`` under ``depth`` other errors, each raised from the one below (as ``raise ... from``)."""
    for level in range(depth):
        wrapper = OSError(f"level {level}")
        wrapper.__cause__ = cause
        cause = wrapper
    return cause


def send_failing_with(cause: BaseException) -> Exception:
    """What ``send`` raises when the transport fails with httpx.ConnectError caused by ``cause``."""
    from etl.errors import ApiError

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connect failed", request=request) from cause

    http = make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler))
    with http, pytest.raises(ApiError) as caught:
        send(http, httpx.Request("GET", "https://api.test/v3/connections"), path="/connections")
    return caught.value


CERTIFICATE = ssl.SSLCertVerificationError


@pytest.mark.parametrize("cause, why", [
    (ssl_error(CERTIFICATE, verify_message="self-signed certificate"),
     "the certificate was refused (self-signed certificate)"),
    (ssl_error(CERTIFICATE, reason="CERTIFICATE_VERIFY_FAILED"),
     "the certificate was refused (CERTIFICATE_VERIFY_FAILED)"),
    (ssl_error(CERTIFICATE), "the certificate was refused (verify failed)"),
    (ssl_error(reason="WRONG_VERSION_NUMBER"), "the handshake failed (WRONG_VERSION_NUMBER)"),
    (ssl_error(), "the handshake failed (SSLError)"),
    (chained(ssl_error(reason="TLSV1_ALERT_PROTOCOL_VERSION"), 8),  # the 10th error of the chain
     "the handshake failed (TLSV1_ALERT_PROTOCOL_VERSION)"),
])
def test_a_refused_certificate_or_handshake_is_fatal_and_says_why(cause: BaseException, why: str) -> None:
    from etl.errors import FatalApiError

    error = send_failing_with(cause)
    assert type(error) is FatalApiError and error.kind == "tls" and error.path == "/connections"
    assert error.detail is not None and error.detail.startswith(f"TLS with api.test failed: {why}; check the URL")


def test_a_refusal_is_found_through_implicit_chaining_too() -> None:
    from etl.errors import FatalApiError

    try:
        try:
            raise ssl_error(CERTIFICATE, verify_message="certificate has expired")
        except ssl.SSLError:
            raise OSError("while connecting")  # noqa: B904 - the chain httpcore leaves: __context__ only
    except OSError as wrapper:
        cause = wrapper
    assert cause.__cause__ is None and cause.__context__ is not None
    error = send_failing_with(cause)
    assert type(error) is FatalApiError and error.detail is not None
    assert "the certificate was refused (certificate has expired)" in error.detail


@pytest.mark.parametrize("cause", [
    ssl_error(ssl.SSLEOFError, reason="UNEXPECTED_EOF_WHILE_READING"),  # the server hung up: a blip
    ssl_error(ssl.SSLZeroReturnError, reason="ZERO_RETURN"),
    ConnectionRefusedError(111, "Connection refused"),
    chained(ssl_error(CERTIFICATE, verify_message="self-signed certificate"), 9),  # past the 10 causes looked at
])
def test_other_transport_failures_are_retriable_network_errors(cause: BaseException) -> None:
    from etl.errors import RetriableApiError

    error = send_failing_with(cause)
    assert type(error) is RetriableApiError and error.kind == "network"
    assert (error.path, error.detail) == ("/connections", "ConnectError: connect failed")


# -- the environment's proxy variables ---------------------------------------------------------------

@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable set; the test sets its own, in order."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_no_proxy_names_hosts_and_is_not_read_as_a_proxy_url(proxy_env: pytest.MonkeyPatch) -> None:
    from etl.api.transport import check_environment_proxies

    proxy_env.setenv("NO_PROXY", "localhost,.internal")
    check_environment_proxies()  # "localhost,.internal" is no proxy URL, and needs none
    proxy_env.setenv("HTTPS_PROXY", "garbage")  # a bad proxy after NO_PROXY is still found
    with pytest.raises(ConfigError) as caught:
        check_environment_proxies()
    assert caught.value.errors == [
        "HTTPS_PROXY (or https_proxy): not a proxy URL httpx can use (http://, https:// or socks5://HOST:PORT)"]


def test_every_bad_proxy_variable_is_named(proxy_env: pytest.MonkeyPatch) -> None:
    from etl.api.transport import check_environment_proxies

    proxy_env.setenv("HTTPS_PROXY", "garbage")
    proxy_env.setenv("HTTP_PROXY", "ftp://proxy:21")
    with pytest.raises(ConfigError) as caught:
        check_environment_proxies()
    assert sorted(e.split(":")[0] for e in caught.value.errors) == ["HTTPS_PROXY (or https_proxy)",
                                                                    "HTTP_PROXY (or http_proxy)"]


def test_a_socks_proxy_needs_socksio(proxy_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whether socksio is installed is decided here: a module of that name on the path, or none."""
    from etl.api.transport import check_environment_proxies

    proxy_env.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    proxy_env.setitem(sys.modules, "socksio", None)  # how Python says a module cannot be imported
    with pytest.raises(ConfigError) as caught:
        check_environment_proxies()
    assert caught.value.errors == [
        "ALL_PROXY (or all_proxy): a SOCKS proxy needs the socksio package (pip install 'httpx[socks]')"]
    proxy_env.delitem(sys.modules, "socksio")
    (tmp_path / "socksio.py").write_text("")
    proxy_env.syspath_prepend(str(tmp_path))
    check_environment_proxies()  # socksio is there: the SOCKS proxy can be used


# -- the answer's Content-Encoding -------------------------------------------------------------------

BODY = b'{"data": []}'


class Chunks(httpx.SyncByteStream):
    """A body that comes in chunks of ``size`` bytes."""

    def __init__(self, content: bytes, size: int) -> None:
        self.content, self.size = content, size

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.content), self.size):
            yield self.content[start:start + self.size]


def sent_with_encoding(encoding: str, content: bytes, limits: ReadLimits | None = None,
                       chunk: int | None = None) -> httpx.Response:
    """What ``send`` makes of an answer in ``encoding`` (the bytes as they come on the wire, in one chunk or in
    chunks of ``chunk`` bytes)."""
    def handler(request: httpx.Request) -> httpx.Response:
        stream = httpx.ByteStream(content) if chunk is None else Chunks(content, chunk)
        return httpx.Response(200, headers={"content-encoding": encoding}, stream=stream)

    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        return send(http, httpx.Request("GET", "https://api.test/v3/connections"), path="/connections",
                    limits=limits)


@pytest.mark.parametrize("encoding, content", [
    ("identity", BODY), (" Identity ", BODY), ("", BODY),
    ("gzip", gzip.compress(BODY, mtime=0)), ("x-gzip", gzip.compress(BODY, mtime=0)),
    ("X-GZIP", gzip.compress(BODY, mtime=0)),
    ("deflate", zlib.compress(BODY)), ("Deflate", zlib.compress(BODY)),
])
def test_every_content_encoding_http_names_is_decoded(encoding: str, content: bytes) -> None:
    response = sent_with_encoding(encoding, content)
    assert response.content == BODY and "content-encoding" not in response.headers


@pytest.mark.parametrize("encoding, content", [("gzip", zlib.compress(BODY)),
                                               ("deflate", gzip.compress(BODY, mtime=0))])
def test_an_answer_not_in_the_encoding_it_names_is_refused(encoding: str, content: bytes) -> None:
    from etl.errors import ApiError

    with pytest.raises(ApiError) as caught:
        sent_with_encoding(encoding, content)
    assert str(caught.value) == "http on /connections: answer is not valid compressed data"


@pytest.mark.parametrize("encoding, shown", [("br", "'br'"), ("compress" * 4, "'compresscompresscomp'")])
def test_an_unsupported_content_encoding_is_refused_by_name(encoding: str, shown: str) -> None:
    from etl.errors import ApiError

    with pytest.raises(ApiError) as caught:
        sent_with_encoding(encoding, BODY)
    assert str(caught.value) == f"http on /connections: answer in an unsupported content-encoding {shown}"
    assert (caught.value.path, caught.value.kind) == ("/connections", "http")


@pytest.mark.parametrize("encoding, content", [("identity", BODY), ("gzip", gzip.compress(BODY, mtime=0))])
def test_an_answer_of_exactly_max_response_bytes_is_read_and_one_byte_more_is_refused(
        encoding: str, content: bytes) -> None:
    from etl.errors import ApiError

    assert sent_with_encoding(encoding, content, ReadLimits(max_bytes=len(BODY))).content == BODY
    with pytest.raises(ApiError) as caught:
        sent_with_encoding(encoding, content, ReadLimits(max_bytes=len(BODY) - 1))
    assert str(caught.value) == ("too_large HTTP 200 on /connections: "
                                 "answer larger than api.max_response_bytes (11 bytes)")
    assert caught.value.kind == "too_large" and caught.value.path == "/connections"


LONG = b'{"data": [' + b", ".join(b'"%032x"' % (n * 2654435761) for n in range(200)) + b"]}"


@pytest.mark.parametrize("encoding, content", [("identity", LONG), ("gzip", gzip.compress(LONG, mtime=0)),
                                               ("deflate", zlib.compress(LONG))])
def test_an_answer_in_many_chunks_is_decoded_whole_and_bounded_as_a_whole(encoding: str, content: bytes) -> None:
    from etl.errors import ApiError

    assert sent_with_encoding(encoding, content, ReadLimits(max_bytes=len(LONG)), chunk=97).content == LONG
    with pytest.raises(ApiError) as caught:
        sent_with_encoding(encoding, content, ReadLimits(max_bytes=len(LONG) - 1), chunk=97)
    assert caught.value.kind == "too_large"


@pytest.mark.parametrize("encoding, content, kind, detail", [
    ("gzip", gzip.compress(LONG, mtime=0)[:-8], "network", "the answer ended before its compressed data did"),
    ("gzip", gzip.compress(LONG, mtime=0)[:200], "network", "the answer ended before its compressed data did"),
    ("deflate", zlib.compress(LONG)[:-4], "network", "the answer ended before its compressed data did"),
    ("gzip", gzip.compress(BODY, mtime=0) * 2, "http", "answer has bytes after the end of its compressed data"),
    ("deflate", zlib.compress(BODY) + b"junk", "http", "answer has bytes after the end of its compressed data"),
])
def test_compressed_data_that_is_cut_short_or_followed_by_more_is_refused(
        encoding: str, content: bytes, kind: str, detail: str) -> None:
    from etl.errors import ApiError, RetriableApiError

    with pytest.raises(ApiError) as caught:
        sent_with_encoding(encoding, content, chunk=50)
    assert (caught.value.kind, caught.value.detail, caught.value.path) == (kind, detail, "/connections")
    assert isinstance(caught.value, RetriableApiError) is (kind == "network")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_empty_answer_in_an_encoding_is_empty(encoding: str) -> None:
    assert sent_with_encoding(encoding, b"").content == b""


def test_a_compression_bomb_is_refused_without_being_decoded_in_memory() -> None:
    import tracemalloc

    from etl.errors import ApiError

    bomb = gzip.compress(b"\0" * 50_000_000, mtime=0)  # 50 MB in about 50 KB
    tracemalloc.start()
    try:
        with pytest.raises(ApiError) as caught:
            sent_with_encoding("gzip", bomb, ReadLimits(max_bytes=1000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "too_large" and len(bomb) < 100_000
    assert peak < 5_000_000  # allocations while sending, not the 50 MB the bomb holds


class Trickle(httpx.SyncByteStream):
    """An answer's body that comes in two parts, ``pause`` seconds apart."""

    def __init__(self, pause: float) -> None:
        self.pause = pause

    def __iter__(self) -> Iterator[bytes]:
        yield BODY[:5]
        time.sleep(self.pause)
        yield BODY[5:]


def test_an_answer_still_coming_at_the_request_deadline_is_a_retriable_timeout() -> None:
    from etl.errors import RetriableApiError

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Trickle(0.3))

    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        request = httpx.Request("GET", "https://api.test/v3/connections")
        assert send(http, request, path="/connections", limits=ReadLimits(deadline=2)).content == BODY
        with pytest.raises(RetriableApiError) as caught:
            send(http, request, path="/connections", limits=ReadLimits(deadline=0.25))
    assert str(caught.value) == "timeout on /connections: no complete answer within api.request_deadline (0.25s)"
    assert (caught.value.kind, caught.value.path) == ("timeout", "/connections")


# -- what send gives back, and the timeouts it gives each request -------------------------------------------

def test_each_request_waits_no_longer_than_the_clients_timeouts_nor_its_deadline() -> None:
    seen: list[dict[str, float | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, content=BODY)

    request = httpx.Request("GET", "https://api.test/v3/connections")
    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        send(http, request, path="/connections", limits=ReadLimits(deadline=2))
        send(http, request, path="/connections", limits=ReadLimits(deadline=10))
    with httpx.Client(timeout=httpx.Timeout(None, connect=3, pool=20), transport=httpx.MockTransport(handler)) as http:
        send(http, request, path="/connections", limits=ReadLimits(deadline=10))
    assert seen == [
        {"connect": 2, "read": 2, "write": 2, "pool": 2},
        {"connect": 5, "read": 5, "write": 5, "pool": 5},
        {"connect": 3, "read": 10, "write": 10, "pool": 10},  # no timeout of the client's: the deadline's
    ]


def test_the_answer_keeps_its_status_reason_and_headers_but_not_those_of_its_encoding(
        caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(203, headers={"content-encoding": "gzip", "x-request-id": "r-1",
                                            "content-type": "application/json"},
                              content=gzip.compress(BODY, mtime=0), extensions={"reason_phrase": b"Fine", "other": 1})

    request = httpx.Request("GET", "https://api.test/v3/connections")
    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http, \
            caplog.at_level("DEBUG", logger="etl.api.transport"):
        response = send(http, request, path="/connections")
    assert (response.status_code, response.reason_phrase, response.content) == (203, "Fine", BODY)
    assert response.request is request and "other" not in response.extensions
    assert sorted(response.headers.items()) == [("content-length", str(len(BODY))),
                                                ("content-type", "application/json"), ("x-request-id", "r-1")]
    (line,) = [r.getMessage() for r in caplog.records if r.name == "etl.api.transport"]
    took = re.fullmatch(r"GET /connections: HTTP 203, 12 bytes in (\d+\.\d{3})s", line)
    assert took is not None and 0 <= float(took[1]) < 5  # the time the request took, not a clock reading


def test_a_timeout_of_httpx_is_a_retriable_timeout_named_for_its_kind() -> None:
    from etl.errors import RetriableApiError

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http, \
            pytest.raises(RetriableApiError) as caught:
        send(http, httpx.Request("GET", "https://api.test/v3/connections"), path="/connections")
    assert str(caught.value) == "timeout on /connections: ReadTimeout"
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)


def test_a_refused_certificate_names_the_host_and_what_to_check() -> None:
    error = send_failing_with(ssl_error(CERTIFICATE, verify_message="self-signed certificate"))
    assert str(error) == (
        "tls on /connections: TLS with api.test failed: the certificate was refused (self-signed certificate); "
        "check the URL, the server's certificate and the trusted certificates (SSL_CERT_FILE)")
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_the_pooled_client_names_itself_asks_for_json_and_compression_and_follows_no_redirect() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "https://elsewhere.test/"})

    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        assert http.timeout == httpx.Timeout(5, connect=5)
        request = http.build_request("GET", "https://api.test/v3/connections")
        assert send(http, request, path="/connections").status_code == 302
    assert len(seen) == 1  # the redirect was not followed
    assert (seen[0].headers["user-agent"], seen[0].headers["accept"], seen[0].headers["accept-encoding"]) == (
        "smartcar-etl", "application/json", "gzip, deflate")  # only what _read_body decodes, whatever httpx could
    assert sorted(seen[0].headers) == ["accept", "accept-encoding", "connection", "host", "user-agent"]
    with make_http_client(timeout=90, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        assert http.timeout == httpx.Timeout(90, connect=30)  # connecting never waits more than 30 s


class Counting(http.server.BaseHTTPRequestHandler):
    """Answers 200 once the test releases it; notes how many requests are in at once, and each one's connection."""

    protocol_version = "HTTP/1.1"  # keep-alive
    server: Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        server = self.server
        with server.changed:
            server.ports.append(self.client_address[1])
            server.active += 1
            server.peak = max(server.peak, server.active)
            server.changed.notify_all()
        server.released.wait(30)
        with server.changed:
            server.active -= 1
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Counting)
        self.active = self.peak = 0
        self.ports: list[int] = []
        self.changed = threading.Condition()
        self.released = threading.Event()


def test_the_pooled_client_holds_a_connection_per_request_in_flight_plus_two_and_keeps_them_open(
        proxy_env: pytest.MonkeyPatch) -> None:
    server = Server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v3/connections"
    statuses: list[int] = []
    try:
        with make_http_client(timeout=60, concurrency=2) as http:  # 2 in flight, the token, a page read ahead
            wave = [threading.Thread(target=lambda: statuses.append(http.get(url).status_code)) for _ in range(5)]
            for thread in wave:
                thread.start()
            with server.changed:  # four requests in, held: the fifth waits for a connection, however long
                assert server.changed.wait_for(lambda: server.active == 4, timeout=30)
            time.sleep(0.3)  # room for a fifth connection, were the pool larger
            peak = server.peak
            server.released.set()
            for thread in wave:
                thread.join(30)
            opened = set(server.ports)
            for _ in range(4):
                statuses.append(http.get(url).status_code)
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
    assert peak == 4 and statuses == [200] * 9 and len(server.ports) == 9  # the fifth waited for one of the four
    assert len(opened) == 4 and set(server.ports) == opened  # which stayed open for the requests after


def test_the_pooled_client_keeps_no_cookie_an_answer_sets_and_sends_none() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"set-cookie": "session=abc; Path=/"}, content=BODY)

    with make_http_client(timeout=5, concurrency=1, transport=httpx.MockTransport(handler)) as http:
        for _ in range(2):
            request = http.build_request("GET", "https://api.test/v3/connections")
            assert send(http, request, path="/connections").status_code == 200
        assert http.post("https://api.test/oauth2/token", data={"grant_type": "client_credentials"}).status_code == 200
        assert not http.cookies and list(http.cookies.jar) == []
        for setting in (lambda: setattr(http, "cookies", {"session": "abc"}),
                        lambda: http.cookies.set("session", "abc"), lambda: http.cookies.update({"session": "abc"}),
                        lambda: ApiClient(cookies={"session": "abc"})):
            with pytest.raises(TypeError, match="the job's HTTP client keeps no cookies"):
                setting()
        assert not http.cookies
    assert [r.headers.get("cookie") for r in seen] == [None, None, None]
