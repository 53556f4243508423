"""Sending one request (``etl.api.transport``): the pooled client, the environment's proxy, bounded reads."""

from __future__ import annotations

import socket
import threading

import httpx
import pytest

from etl.api.transport import make_http_client, send

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
