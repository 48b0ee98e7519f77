"""The supervisor's HTTP endpoint: /metrics (merge of all shard processes), /healthz, /readyz.

A stdlib ThreadingHTTPServer in a daemon thread: the supervisor's main loop stays free, and a
slow scrape never blocks a probe.

/metrics can require a bearer token or basic auth (``metrics.bearer_token``,
``metrics.basic_auth``); a request without them gets 401 and a WWW-Authenticate challenge.
The probes stay open: the ECS container health check and a load balancer's target health
check send no credentials (neither can set an Authorization header), and the probes return
only which checks failed, no metric data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from consumer.metrics.health import HealthChecks, Verdict
from consumer.metrics.registry import merged_registry, reap_dead_processes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScrapeAuth:
    """The credentials /metrics accepts; with neither set, /metrics is open."""

    bearer_token: str = ""
    basic_auth: str = ""  # "user:password"

    def __post_init__(self) -> None:
        if self.basic_auth and ":" not in self.basic_auth:
            raise ValueError("metrics.basic_auth: expected 'user:password'")

    @property
    def required(self) -> bool:
        return bool(self.bearer_token or self.basic_auth)

    def admits(self, authorization: str | None) -> bool:
        """Whether an Authorization header value carries one of the configured credentials."""
        if not self.required:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.bearer_token:
            return _same(value.encode(), self.bearer_token.encode())
        if scheme == "basic" and self.basic_auth:
            try:
                decoded = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return False
            return _same(decoded, self.basic_auth.encode())
        return False

    def challenges(self) -> list[str]:
        """WWW-Authenticate values, one per accepted scheme (RFC 9110 section 11.6.1)."""
        out = []
        if self.bearer_token:
            out.append('Bearer realm="metrics"')
        if self.basic_auth:
            out.append('Basic realm="metrics", charset="UTF-8"')
        return out


def _same(given: bytes, expected: bytes) -> bool:
    # Constant time in the content and, by comparing digests, in the length too.
    return hmac.compare_digest(hashlib.sha256(given).digest(), hashlib.sha256(expected).digest())


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                if self.server.owner.auth.admits(self.headers.get("Authorization")):
                    self._metrics()
                else:
                    self._unauthorized()
            elif path == "/healthz":
                self._verdict(self.server.owner.health.liveness())
            elif path == "/readyz":
                self._verdict(self.server.owner.readiness())
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        except Exception:
            log.exception("error serving %s", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", "text/plain")

    def _metrics(self) -> None:
        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.owner.collect_source())
        self._send(HTTPStatus.OK, body, content_type)

    def _verdict(self, verdict: Verdict) -> None:
        status = HTTPStatus.OK if verdict.ok else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(verdict.as_json()).encode() + b"\n"
        self._send(status, body, "application/json")

    def _unauthorized(self) -> None:
        # Debug only: a scraper without credentials shows as a failed target in Prometheus,
        # and a port scan must not flood the log.
        log.debug("metrics scrape without valid credentials from %s", self.client_address[0])
        challenges = [("WWW-Authenticate", c) for c in self.server.owner.auth.challenges()]
        self._send(HTTPStatus.UNAUTHORIZED, b"unauthorized\n", "text/plain", challenges)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes to stderr on every probe; keep the JSON log quiet.
        log.debug("http %s", format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: MetricsServer


class MetricsServer:
    """Serves the merged metrics and the probes until :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        multiproc_dir: str | os.PathLike[str],
        health: HealthChecks,
        auth: ScrapeAuth | None = None,
    ) -> None:
        self.host = host
        self.auth = auth or ScrapeAuth()
        self.port = port  # 0 picks a free port; the real one is known after start()
        self.multiproc_dir = str(multiproc_dir)
        self.health = health
        self._registry = merged_registry(self.multiproc_dir)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def collect_source(self) -> CollectorRegistry:
        """The merged registry, after forgetting the live gauges of exited processes."""
        reap_dead_processes(self.multiproc_dir)
        return self._registry

    def readiness(self) -> Verdict:
        return self.health.readiness(self.collect_source())

    def start(self) -> MetricsServer:
        httpd = _Server((self.host, self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        log.info("metrics server listening on %s", self.url,
                 extra={"metrics_auth": self.auth.required})
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
