"""A fault-injecting HTTP proxy (stdlib, one thread per request) in front of an OpenSearch.

- Whole requests: a `fail_fraction` of them get 503 without being forwarded, and a body
  over `max_body_bytes` gets 413 (like http.max_content_length).
- _bulk requests: a `throttle_fraction` of the ITEMS are answered 429
  (es_rejected_execution_exception) and NOT forwarded; the rest are forwarded and the
  upstream's item results are merged back in request order.

Because failed items never reach the server, a client that retries only what failed
indexes every document exactly once (each ends at _version 1). Faults are drawn from a
seeded Random so a failing test reproduces.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class ProxyStats:
    requests: int = 0
    failed_requests: int = 0
    too_large: int = 0
    bulk_items_seen: int = 0
    throttled_items: int = 0
    forwarded_items: int = 0


def _split_bulk(body: bytes) -> list[tuple[bytes, bytes | None]]:
    """NDJSON into (action, source) pairs; delete actions have no source line."""
    lines = [ln for ln in body.split(b"\n") if ln.strip()]
    pairs: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(lines):
        action = lines[i]
        op = next(iter(json.loads(action)))
        if op == "delete":
            pairs.append((action, None))
            i += 1
        else:
            pairs.append((action, lines[i + 1]))
            i += 2
    return pairs


def _throttled_item(action: bytes) -> dict[str, Any]:
    op, meta = next(iter(json.loads(action).items()))
    return {
        op: {
            "_index": meta.get("_index"),
            "_id": meta.get("_id"),
            "status": 429,
            "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution (injected by faulty proxy)",
            },
        }
    }


class FaultyProxy:
    def __init__(
        self,
        upstream: str,
        *,
        throttle_fraction: float = 0.0,
        fail_fraction: float = 0.0,
        max_body_bytes: int | None = None,
        seed: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.throttle_fraction = throttle_fraction
        self.fail_fraction = fail_fraction
        self.max_body_bytes = max_body_bytes
        self.stats = ProxyStats()
        self._rand = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self, fraction: float) -> bool:
        with self._lock:
            return self._rand.random() < fraction

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            ctype = resp.getheader("content-type", "application/json")
            return resp.status, ctype, resp.read()
        finally:
            conn.close()

    def handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        with self._lock:
            self.stats.requests += 1
        if self._draw(self.fail_fraction):
            with self._lock:
                self.stats.failed_requests += 1
            err = {"error": {"type": "unavailable", "reason": "injected 503"}, "status": 503}
            return 503, "application/json", json.dumps(err).encode()
        if self.max_body_bytes is not None and len(body) > self.max_body_bytes:
            with self._lock:
                self.stats.too_large += 1
            err = {"error": {"type": "content_too_long", "reason": "injected 413"}, "status": 413}
            return 413, "application/json", json.dumps(err).encode()
        if method in ("POST", "PUT") and urlsplit(path).path.endswith("/_bulk") and body:
            return self._bulk(method, path, headers, body)
        return self.forward(method, path, headers, body)

    def _bulk(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        pairs = _split_bulk(body)
        keep = [not self._draw(self.throttle_fraction) for _ in pairs]
        sent = [p for p, k in zip(pairs, keep, strict=True) if k]
        with self._lock:
            self.stats.bulk_items_seen += len(pairs)
            self.stats.throttled_items += len(pairs) - len(sent)
            self.stats.forwarded_items += len(sent)
        upstream_items: list[dict[str, Any]] = []
        took = 0
        if sent:
            lines = [ln for a, s in sent for ln in ((a,) if s is None else (a, s))]
            status, ctype, raw = self.forward(method, path, headers, b"\n".join(lines) + b"\n")
            if status >= 300:
                return status, ctype, raw
            answer = json.loads(raw)
            upstream_items = list(answer["items"])
            took = int(answer.get("took", 0))
        it = iter(upstream_items)
        items = [
            next(it) if k else _throttled_item(a) for (a, _), k in zip(pairs, keep, strict=True)
        ]
        errors = any("error" in next(iter(i.values())) for i in items)
        merged = {"took": took, "errors": errors, "items": items}
        return 200, "application/json", json.dumps(merged).encode()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                status, ctype, out = proxy.handle(self.command, self.path, headers, body)
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                return None  # keep test output quiet

        return Handler
