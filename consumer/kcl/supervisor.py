"""`aetherstream run`: the process that owns the daemon, the metrics endpoint and the mirror.

Start-up order matters: the multiprocess metrics directory is prepared and exported before
the daemon starts, so every processor child inherits it. Shutdown is the reverse: the daemon
first (its processors flush and checkpoint), then the mirror's last publish, then HTTP.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType

from consumer.config import Settings, with_overrides
from consumer.kcl.class_archive import ClassArchive, class_archive
from consumer.kcl.daemon import KclDaemon, daemon_command, find_java
from consumer.kcl.properties import (
    default_worker_id,
    processor_command,
    region_of,
    render_properties,
    service_endpoint,
)
from consumer.metrics.cloudwatch import Mirror, build_mirror
from consumer.metrics.health import HealthChecks
from consumer.metrics.registry import configure_multiprocess
from consumer.metrics.server import MetricsServer, ScrapeAuth

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, settings: Settings, run_dir: Path, env: Mapping[str, str] | None = None):
        # One worker id for the daemon and its processors: a processor confirms it in KCL's
        # lease table (leaseOwner) before every write.
        self.worker_id = settings.kcl.worker_id or default_worker_id()
        settings = with_overrides(settings, kcl={"worker_id": self.worker_id})
        self.settings = settings
        self.run_dir = run_dir.resolve()
        self.env = dict(os.environ if env is None else env)
        self._stop = threading.Event()
        self.daemon: KclDaemon | None = None
        self.server: MetricsServer | None = None
        self.health: HealthChecks | None = None
        self._mirror: Mirror | None = None
        self._archive: ClassArchive | None = None

    @property
    def metrics_url(self) -> str:
        return f"{self.server.url}/metrics" if self.server else ""

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mp_dir = self.settings.metrics.multiproc_dir or str(self.run_dir / "prometheus")
        self.env.update(configure_multiprocess(mp_dir))
        self.env["AETHERSTREAM_KCL_WORKER_ID"] = self.worker_id
        self.health = HealthChecks(self._daemon_alive, self.settings.metrics.max_heartbeat_age_s)
        ms = self.settings.metrics
        auth = ScrapeAuth(ms.bearer_token, ms.basic_auth) if (
            ms.bearer_token or ms.basic_auth) else None
        self.server = MetricsServer(ms.host, ms.port, mp_dir, self.health, auth).start()
        self._mirror = self._start_mirror(mp_dir)
        props = self.run_dir / "kcl.properties"
        props.write_text(render_properties(self.settings, self.env, processor_command()))
        java = find_java()
        self._archive = class_archive(self.settings.kcl.class_archive, java)
        command = daemon_command(props, self.settings.kcl.java_heap_mb, java,
                                 self._archive.jvm_options() if self._archive else ())
        self.daemon = KclDaemon(command, self.env, self.run_dir / "kcl-daemon.log")
        self.daemon.start()

    def _daemon_alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def _start_mirror(self, mp_dir: str) -> Mirror | None:
        ms = self.settings.metrics
        mirror = build_mirror(
            ms.cloudwatch, multiproc_dir=mp_dir, namespace=ms.namespace,
            application=self.settings.stream.app_name, stream_name=self.settings.stream.name,
            interval_s=ms.publish_interval_s, emf_stream=sys.stderr,
            endpoint_url=service_endpoint("cloudwatch", self.env), region_name=region_of(self.env),
        )
        return mirror.start() if mirror else None

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            log.info(
                "signal received; shutting down", extra={"signal": signal.Signals(signum).name}
            )
            self.request_stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def wait(self) -> int:
        """Run until a stop request or the daemon's death; returns the exit code to use."""
        assert self.health is not None
        while not self._stop.wait(1.0):
            self.health.tick()
            if not self._daemon_alive():
                log.error("KCL daemon exited unexpectedly")
                return 1
        return 0

    def stop(self) -> None:
        """Graceful: processors get shutdown_requested, flush and checkpoint, within grace."""
        started = time.monotonic()
        grace_s = self.settings.kcl.shutdown_grace_ms / 1000 + 15
        if self.daemon:
            code = self.daemon.stop(grace_s)
            if self._archive:
                self._archive.keep(code)
        if self._mirror:
            self._mirror.stop()
        if self.health:
            self.health.stopped()
        if self.server:
            self.server.stop()
        log.info("supervisor stopped", extra={"seconds": round(time.monotonic() - started, 1)})


def run(settings: Settings, run_dir: Path) -> int:
    supervisor = Supervisor(settings, run_dir)
    supervisor.install_signal_handlers()
    supervisor.start()
    sys.stderr.flush()
    try:
        return supervisor.wait()
    finally:
        supervisor.stop()
