"""The supervisor's HTTP endpoint: /metrics (merge of all shard processes), /healthz, /readyz.

A stdlib ThreadingHTTPServer in a daemon thread: the supervisor's main loop stays free, and a
slow scrape never blocks a probe.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from consumer.metrics.health import HealthChecks, Verdict
from consumer.metrics.registry import merged_registry, reap_dead_processes

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._metrics()
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

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
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
    ) -> None:
        self.host = host
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
        log.info("metrics server listening on %s", self.url)
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
