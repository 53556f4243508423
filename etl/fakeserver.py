"""The fake API behind a real HTTP server on loopback (``etl.fakeapi.serve``): each request is turned into
an ``httpx.Request``, answered by ``FakeApi.handle``, and written back."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import httpx

REASONS = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests",
    430: "Billing", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}


class Handles(Protocol):
    """What ``serve`` needs of a fake: ``FakeApi``, or ``FakeApplications`` (several behind one address)."""

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one request."""
        ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK hold every answer back by ~40 ms.
    disable_nagle_algorithm = True
    server: _FakeServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        host = self.headers.get("Host", "127.0.0.1")
        request = httpx.Request(self.command, f"http://{host}{self.path}", headers=self.headers.items(),
                                content=body)
        try:
            response = self.server.fake.handle(request)
        except httpx.TransportError:
            self.close_connection = True  # a scripted network failure: hang up without answering
            return
        content = response.content if response.is_stream_consumed else b"".join(response.iter_raw())
        self.send_response(response.status_code, REASONS.get(response.status_code))
        for name, value in response.headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by default
        return


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, fake: Handles, address: tuple[str, int]) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (its timeout) has closed the socket: not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(fake: Handles, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``fake`` on loopback in a thread; yield its root URL (``http://127.0.0.1:PORT``)."""
    server = _FakeServer(fake, (host, port))
    thread = threading.Thread(target=server.serve_forever, name="fake-api", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
