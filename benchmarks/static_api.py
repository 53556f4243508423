"""A Smartcar API that is not the bottleneck: pre-rendered documents behind nginx, or an in-memory server.

``write_world`` renders the fake world once: one file per connection
(``v3/connections/<id>``) and the listing as pages of 100 (``pages/<n>.json``).
``serve`` puts it behind nginx when nginx is on the machine, else behind
``MemoryServer`` (asyncio, HTTP/1.1 keep-alive, answers from a dict in its own
process). Authentication is a ready token: nothing checks it, as no request
pays for it. ``ceiling`` measures what the server answers per second to a
pipelined raw-socket client, which costs far less than any HTTP library.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from etl.fakeapi import API_PREFIX, FakeApi

PAGE_SIZE = 100
_PAGE_RE = re.compile(r"page(?:%5B|\[)number(?:%5D|\])=(\d+)")


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_world(root: Path, count: int, *, seed: int = 0) -> list[str]:
    """Render ``count`` connections (the fake API's world for ``seed``) under ``root``; return their ids."""
    fake = FakeApi()
    ids = fake.populate(count, seed=seed)
    one = root / "v3" / "connections"
    one.mkdir(parents=True)
    (root / "pages").mkdir()
    docs = [fake.document(fake.connections[i]) for i in ids]
    for connection_id, doc in zip(ids, docs, strict=True):
        (one / connection_id).write_bytes(json.dumps({"data": doc}).encode())
    last = max(1, -(-count // PAGE_SIZE))
    link = f"{API_PREFIX}/connections?page[number]={{}}&page[size]={PAGE_SIZE}"
    for number in range(1, last + 1):
        body = {
            "data": docs[(number - 1) * PAGE_SIZE: number * PAGE_SIZE],
            "meta": {"pageNumber": number, "pageSize": PAGE_SIZE, "totalCount": count},
            "links": {"next": link.format(number + 1) if number < last else None},
        }
        (root / "pages" / f"{number}.json").write_bytes(json.dumps(body).encode())
    return ids


NGINX_CONF = """
{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    default_type application/json;
    map $args $page {{ "~page(%5B|\\[)number(%5D|\\])=(?<n>[0-9]+)" $n; default 0; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /v3/connections {{ try_files /pages/$page.json =404; }}
        location /v3/connections/ {{ }}
    }}
}}
"""


class MemoryServer:
    """HTTP/1.1 keep-alive GETs answered from a dict of path -> body; run in its own process by ``serve``."""

    def __init__(self, root: Path) -> None:
        self.bodies: dict[str, bytes] = {}
        for path in (root / "v3" / "connections").iterdir():
            self.bodies[f"{API_PREFIX}/connections/{path.name}"] = path.read_bytes()
        for path in (root / "pages").iterdir():
            self.bodies[f"page:{path.stem}"] = path.read_bytes()

    def answer(self, target: str) -> bytes:
        """The whole HTTP response for a request target."""
        path, _, query = target.partition("?")
        if path == f"{API_PREFIX}/connections":
            match = _PAGE_RE.search(query)
            path = f"page:{match.group(1) if match else 0}"
        body = self.bodies.get(path)
        if body is None:
            return b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        return head.encode() + body

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                if length:
                    await reader.readexactly(int(length.group(1)))
                target = head.split(b" ", 2)[1].decode()
                writer.write(self.answer(target))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def run(self, port: int) -> None:
        """Serve on loopback until killed."""
        async def main() -> None:
            server = await asyncio.start_server(self._serve, "127.0.0.1", port)
            print("listening", flush=True)
            await server.serve_forever()

        asyncio.run(main())


def _wait_for(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"the static server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the static server did not start")


@contextmanager
def serve(root: Path, server: str = "auto") -> Iterator[tuple[str, str]]:
    """Serve ``root`` with ``server`` (nginx, memory, or auto: nginx if found); yield (base URL, what serves it)."""
    port = free_port()
    nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if server == "nginx" and not nginx:
        raise SystemExit("--server nginx: nginx is not on this machine (apt-get install -y nginx-light)")
    if nginx and server != "memory":
        (root / "tmp").mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""  # its workers read a 0700 temporary directory
        (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=port, user=user))
        cmd = [nginx, "-c", str(root / "nginx.conf"), "-p", str(root)]
        what = "nginx, 1 worker"
    else:
        cmd = [sys.executable, __file__, str(root), str(port)]
        what = "in-memory asyncio server (no nginx on this machine)"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(port, proc)
        yield f"http://127.0.0.1:{port}{API_PREFIX}", what
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def ceiling(base_url: str, ids: list[str], *, seconds: float = 2.0, depth: int = 50) -> float:
    """Answers per second to one raw socket sending ``depth`` pipelined GETs at a time."""
    host_port = base_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    prefix = "/" + base_url.split("//", 1)[1].split("/", 1)[1]
    requests = [f"GET {prefix}/connections/{i} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode() for i in ids[:depth]]
    burst = b"".join(requests)
    answered = 0
    with socket.create_connection((host, int(port))) as sock:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            sock.sendall(burst)
            answered += _read_answers(sock, len(requests))
        elapsed = time.perf_counter() - started
    return answered / elapsed


def _read_answers(sock: socket.socket, count: int) -> int:
    buffer, done = b"", 0
    while done < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            buffer += sock.recv(1 << 20)
            continue
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", buffer[:head_end]).group(1))  # type: ignore[union-attr]
        while len(buffer) < head_end + 4 + length:
            buffer += sock.recv(1 << 20)
        if not buffer.startswith(b"HTTP/1.1 200"):
            status = buffer.split(b"\r", 1)[0].decode()
            raise RuntimeError(f"the static server answered {status}")
        buffer = buffer[head_end + 4 + length:]
        done += 1
    return done


if __name__ == "__main__":
    MemoryServer(Path(sys.argv[1])).run(int(sys.argv[2]))
