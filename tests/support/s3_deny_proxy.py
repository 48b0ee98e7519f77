"""An HTTP proxy in front of an S3 server that refuses one shard's writes the way S3 does.

A stand-in for a bucket policy with a Deny on `s3:PutObject` for one partition prefix: moto
serves S3 but evaluates no bucket policies. While `deny` is set, every PUT or POST whose path
holds `shard=<deny>/` is answered 403 with S3's own AccessDenied error document, without being
forwarded; everything else goes to the upstream and back, headers included. boto3 turns the
answer into the same ClientError (`AccessDenied`) a real bucket policy gives.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect", "host"}
ACCESS_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                 b"<Message>Access Denied</Message><RequestId>DENYPROXY</RequestId></Error>")


class S3DenyProxy:
    def __init__(self, upstream: str, deny: str | None = None) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.deny = deny  # a shard id, or None to pass everything through
        self.denied = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> S3DenyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def refuses(self, method: str, path: str) -> bool:
        shard = self.deny
        if shard is None or method not in ("PUT", "POST"):
            return False
        if f"shard={shard}/" not in unquote(urlsplit(path).path):
            return False
        with self._lock:
            self.denied += 1
        return True

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(method, path, body=body if body or method in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            kept = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
            return resp.status, kept, data
        finally:
            conn.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers boto3's Expect: 100-continue

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.refuses(self.command, self.path):
                    status, headers, out = 403, [("Content-Type", "application/xml")], \
                        ACCESS_DENIED
                else:
                    sent = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    status, headers, out = proxy.forward(self.command, self.path, sent, body)
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler
