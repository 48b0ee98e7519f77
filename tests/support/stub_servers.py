"""Small loopback servers that misbehave on purpose, for error and timeout tests.

- `closed_port()`: a port nothing listens on (connection refused).
- `silent_server()`: accepts TCP and never answers (a hung server: read timeouts), counting
  the connections it accepted.
- `backlogged_server()`: never completes a TCP handshake (connect timeouts).
- `closing_server()`: reads a request and closes without answering (connection closed).
- `status_server(...)`: an HTTP server answering every request with one fixed status and JSON
  body, recording what it got (429 and 503 the way OpenSearch sends them).
- `scripted_http_server(handler)`: an HTTP server whose answers come from a function of the
  request, for protocols the emulators cannot be told to fail (Kinesis per-entry throttling).

Each is a context manager that stops its threads and closes its sockets on exit.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def closed_port() -> int:
    """A loopback port that was free a moment ago and has no listener."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accept_loop(
    server: socket.socket, stop: threading.Event, on_conn: Callable[[socket.socket], None]
) -> None:
    server.settimeout(0.1)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        on_conn(conn)


@contextmanager
def _tcp_server(on_conn: Callable[[socket.socket], None]) -> Iterator[int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    stop = threading.Event()
    thread = threading.Thread(target=_accept_loop, args=(server, stop, on_conn), daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


@dataclass
class Silent:
    port: int
    held: list[socket.socket]

    @property
    def accepted(self) -> int:
        return len(self.held)


@contextmanager
def silent_server() -> Iterator[Silent]:
    """Accepts connections and holds them open without sending a byte."""
    held: list[socket.socket] = []
    with _tcp_server(held.append) as port:
        try:
            yield Silent(port, held)
        finally:
            for conn in held:
                conn.close()


@contextmanager
def backlogged_server() -> Iterator[int]:
    """A listener that never accepts, its queue already full: a new connect gets no SYN-ACK
    and times out, like a host behind a black-holing firewall. Yields the port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    filler: list[socket.socket] = []
    try:
        while True:  # fill the accept queue until a connect stops being answered
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            filler.append(probe)
            if len(filler) > 64:
                raise RuntimeError("the accept queue never filled up")
        yield port
    finally:
        for sock in filler:
            sock.close()
        server.close()


@contextmanager
def closing_server() -> Iterator[int]:
    """Reads what the client sends first, then closes without an answer; yields the port."""

    def answer(conn: socket.socket) -> None:
        conn.settimeout(2)
        with suppress(OSError):
            conn.recv(65536)
        conn.close()

    with _tcp_server(answer) as port:
        yield port


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpStub:
    url: str
    requests: list[Seen] = field(default_factory=list)


Answer = tuple[int, dict[str, str], bytes]


@contextmanager
def scripted_http_server(handler: Callable[[Seen], Answer]) -> Iterator[HttpStub]:
    """HTTP/1.1 on loopback; `handler(request) -> (status, headers, body)`."""
    seen: list[Seen] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Seen(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length) if length else b"",
            )
            with lock:
                seen.append(request)
                status, headers, body = handler(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: stderr is for tests
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpStub(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def json_answer(status: int, body: Any) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


@contextmanager
def status_server(status: int, body: Any) -> Iterator[HttpStub]:
    """Every request gets `status` with `body` as JSON."""
    with scripted_http_server(lambda _: json_answer(status, body)) as stub:
        yield stub


# OpenSearch's own bodies for these statuses.
def _opensearch_error(status: int, kind: str, reason: str) -> dict[str, Any]:
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}


OPENSEARCH_429 = _opensearch_error(
    429, "es_rejected_execution_exception", "rejected execution of coordinating operation"
)
OPENSEARCH_503 = _opensearch_error(
    503, "cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master];"
)
