"""Child-process plumbing for the local stack: free ports, log files, readiness, stop.

Every server runs in its own session (process group), so stopping it signals exactly the
processes we started and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class StartupError(RuntimeError):
    """A local server could not be started; the message names it and its log file."""


def free_port() -> int:
    """A loopback TCP port that stays ours until a server of ours binds it moments later.

    A port from bind(0) is in the kernel's ephemeral range, from which every bind(0) and every
    outgoing connection also draws: between our check and the server's bind, a readiness probe's
    connection could take it (EADDRINUSE, seen in CI). So the port comes from outside that range,
    and a lock file held for this process's life keeps our other processes from choosing it too.
    """
    lo, hi = _ephemeral_range()
    pool: list[int] = [*range(_LOWEST_PORT, lo), *range(max(hi + 1, _LOWEST_PORT), 65536)]
    pool = pool or [*range(max(lo, 1024), hi + 1)]  # a host whose range spans them all
    start = random.randrange(len(pool))  # the first candidate is nearly always taken
    for port in itertools.chain(pool[start:], pool[:start]):
        if port not in _CLAIMED and _claim(port) and _bindable(port):
            return port
    raise StartupError(f"no free loopback port (the ephemeral range is {lo}-{hi})")


_LOWEST_PORT = 10000  # below are the ports services commonly listen on
_CLAIMED: dict[int, IO[bytes] | None] = {}  # port -> its lock file, open while we live
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return lo, hi


def _claim(port: int) -> bool:
    """Lock port's file in a directory our processes share; False if another process holds it."""
    folder = Path(tempfile.gettempdir()) / "aetherstream-ports"
    try:
        folder.mkdir(mode=0o1777, exist_ok=True)
        lock = (folder / str(port)).open("ab")
    except OSError:  # a folder we cannot write (another user's): the bind check alone remains
        _CLAIMED[port] = None
        return True
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return False
    _CLAIMED[port] = lock
    return True


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def port_is_open(port: int, host: str = LOCALHOST) -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to signal the child when we die, even by SIGKILL.

    The signal fires when the *thread* that forked exits, so only the main thread (which
    lives as long as the process) may use it.
    """
    libc = _LIBC
    if libc is None or threading.current_thread() is not threading.main_thread():
        return None
    return lambda: libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def log_tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


@dataclass
class ManagedProcess:
    """One server process we started, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    stop_signal: signal.Signals = signal.SIGTERM
    log_offset: int = 0  # logs are appended across runs; this run's output starts here
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        offset = log_file.tell()
        full_env = {**os.environ, **(env or {})}
        log.info("starting %s: %s (log %s)", name, " ".join(argv), log_path)
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,  # own process group: stop() signals only this tree
                user=user,
                preexec_fn=_die_with_parent(stop_signal),  # no leak if the caller is killed
            )
        except OSError as exc:
            log_file.close()
            raise StartupError(f"{name}: cannot execute {argv[0]}: {exc}") from exc
        return cls(name, popen, log_path, time.monotonic(), stop_signal, offset, log_file)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def new_log_text(self) -> str:
        """What this process has logged so far (not earlier runs)."""
        with self.log_path.open("rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def fail(self, reason: str) -> StartupError:
        return StartupError(
            f"{self.name} {reason}; log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def wait_ready(self, probe: Callable[[], bool], timeout: float,
                   abort: threading.Event) -> float:
        """Poll probe() until true; return seconds since spawn. Raise naming the server."""
        while True:
            code = self.popen.poll()
            if code is not None:
                raise self.fail(f"exited with code {code} during start-up")
            if probe():
                secs = time.monotonic() - self.started_at
                log.info("%s ready in %.2f s (pid %d)", self.name, secs, self.pid)
                return secs
            if time.monotonic() > self.started_at + timeout:
                raise self.fail(f"was not ready within {timeout:.0f} s")
            if abort.wait(0.05):
                raise StartupError(f"{self.name}: start-up abandoned, another server failed")

    def listens_on(self, port: int) -> bool:
        """True once this process itself listens on 127.0.0.1:port.

        Checking the owner (not just connect()) means a port taken by someone else is not
        mistaken for readiness, and a wildcard bind is reported instead of accepted.
        """
        try:
            conns = psutil.Process(self.pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        for conn in conns:
            if conn.status != psutil.CONN_LISTEN or conn.laddr.port != port:
                continue
            if conn.laddr.ip != LOCALHOST:
                raise self.fail(f"listens on {conn.laddr.ip}:{port}, expected {LOCALHOST}")
            return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Signal the leader, wait, then SIGKILL the whole group. Safe to call twice.

        Only the leader gets the polite signal: PostgreSQL's helpers treat SIGINT as
        "cancel" or "checkpoint", and the postmaster shuts them down itself.
        """
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored its stop signal for %.0f s; killing", self.name,
                            self.pid, timeout)
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout)
        # Children that outlived the leader are still in its group.
        self._signal_group(signal.SIGKILL)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class ReadyWaiter:
    """Waits for servers in threads while the caller keeps spawning more.

    Each server gets its own poller, so each start-up time is its own. Spawning stays in the
    calling thread: the parent-death signal is tied to the thread that forks. On any error
    the abort event makes the other pollers give up.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.abort = threading.Event()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="local-stack-ready")
        self._futures: dict[Future[float], str] = {}

    def add(self, proc: ManagedProcess, probe: Callable[[], bool]) -> None:
        future = self._pool.submit(proc.wait_ready, probe, self.timeout, self.abort)
        self._futures[future] = proc.name

    def results(self) -> dict[str, float]:
        """Server name -> seconds from spawn to ready; raises the first failure."""
        return {self._futures[f]: f.result() for f in as_completed(self._futures)}

    def __enter__(self) -> ReadyWaiter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort.set()
        self._pool.shutdown(wait=True)
