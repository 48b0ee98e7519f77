"""Drive one record-processor process through the KCL protocol over pipes, as the daemon does.

One JSON line per message on the child's stdin; the child's stdout is read line by line, a
checkpoint request is answered, a status ends the message, and any other line is ignored as
the daemon ignores it. After shutdownRequested stdin is closed and the child exits.

CPU is that of the whole process tree: wait4() returns the child's own user + sys plus that
of every descendant it waited for (Linux fills it as getrusage RUSAGE_BOTH). A descendant
left running when the child exits (an orphan) is measured with psutil and added.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from consumer.bench.kcl_messages import (
    CheckpointLedger,
    parse_line,
    process_records_line,
    shutdown_requested_line,
)
from consumer.bench.stack_probe import tree_times
from consumer.bench.stats import CpuTimes, tree_seconds
from consumer.local.procs import log_tail
from consumer.records.model import Position


@dataclass(frozen=True)
class Feed:
    """Protocol lines built once and replayed to every processor of a configuration."""

    init: bytes
    batches: Sequence[tuple[bytes, Position]]  # processRecords line, its last position
    records: int
    # Then, as the daemon does once it has caught up (callProcessRecordsEvenForEmptyRecordList),
    # empty batches every idle_interval_s for idle_tail_s: time for idle windows to close.
    idle_tail_s: float = 0.0
    idle_interval_s: float = 0.5

    @property
    def last(self) -> Position:
        return self.batches[-1][1]


@dataclass(frozen=True)
class RunResult:
    name: str
    records: int
    cpu_s: float  # the whole tree, start-up included
    init_cpu_s: float  # the tree's CPU once initialize was answered (imports, clients)
    wall_s: float  # without the idle tail
    idle_tail_s: float
    checkpointed: Position | None
    last_sent: Position
    checkpoint_requests: int
    refused_checkpoints: int
    ignored_lines: int
    orphans: int
    log_path: Path

    @property
    def checkpoint_ok(self) -> bool:
        return self.checkpointed == self.last_sent and not self.refused_checkpoints


class ProcessorFailed(RuntimeError):
    """The processor died, broke the protocol or ran out of time; the message has its log."""


def drive(name: str, argv: Sequence[str], env: Mapping[str, str], feed: Feed, log_path: Path,
          timeout_s: float, on_checkpoint: Callable[[Position], None]) -> RunResult:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("wb") as log:  # the child's stderr: its logs
        proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, env=dict(env), start_new_session=True)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill_session(proc.pid)

    watchdog = threading.Timer(timeout_s, expire)
    watchdog.start()
    session = _Session(proc, CheckpointLedger(), on_checkpoint)
    try:
        session.exchange(feed.init, "initialize")
        init_cpu = tree_seconds(tree_times(psutil.Process(proc.pid)))
        for line, last in feed.batches:
            session.ledger.deliver(last)
            session.exchange(line, "processRecords")
        tail_s = _idle_tail(session, feed)
        descendants = _descendants(proc.pid)
        session.exchange(shutdown_requested_line(), "shutdownRequested")
        assert proc.stdin is not None
        proc.stdin.close()
        cpu, code = _reap(proc)
        orphan_cpu = [t for p in descendants if (t := _cpu_if_alive(p)) is not None]
        if code != 0:
            raise ProcessorFailed(f"exited with {code} after shutdownRequested")
    except (ProcessorFailed, OSError, psutil.Error) as exc:
        reason = f"timed out after {timeout_s:.0f} s" if expired.is_set() else str(exc)
        raise ProcessorFailed(f"{name}: {reason}; its log {log_path}:\n{log_tail(log_path)}"
                              ) from exc
    finally:
        watchdog.cancel()
        _kill_session(proc.pid)  # orphans included; a no-op after a clean exit
        if proc.returncode is None:
            proc.wait()
    ledger = session.ledger
    return RunResult(name, feed.records, cpu + tree_seconds(orphan_cpu), init_cpu,
                     time.monotonic() - started - tail_s, tail_s, ledger.checkpointed, feed.last,
                     ledger.requests, ledger.refused, session.ignored, len(orphan_cpu),
                     log_path)


def _idle_tail(session: _Session, feed: Feed) -> float:
    started = time.monotonic()
    empty = process_records_line([], 0)
    while time.monotonic() - started < feed.idle_tail_s:
        time.sleep(feed.idle_interval_s)
        session.exchange(empty, "processRecords")
    return time.monotonic() - started


class _Session:
    def __init__(self, proc: subprocess.Popen[bytes], ledger: CheckpointLedger,
                 on_checkpoint: Callable[[Position], None]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin: IO[bytes] = proc.stdin
        self.stdout: IO[bytes] = proc.stdout
        self.ledger = ledger
        self.on_checkpoint = on_checkpoint
        self.ignored = 0

    def exchange(self, line: bytes, action: str) -> None:
        """Send one message and serve the processor until it reports the message done."""
        self._send(line)
        while True:
            raw = self.stdout.readline()
            if not raw:
                raise ProcessorFailed(f"closed its stdout while handling {action}")
            message = parse_line(raw)
            if message is None:
                self.ignored += bool(raw.strip())
                continue
            kind = message["action"]
            if kind == "status":
                if message.get("responseFor") != action:
                    raise ProcessorFailed(f"status for {message.get('responseFor')!r} "
                                          f"while handling {action}")
                return
            if kind != "checkpoint":
                raise ProcessorFailed(f"unexpected {kind!r} message while handling {action}")
            answer, taken = self.ledger.answer(message)
            if taken and self.ledger.checkpointed is not None:
                self.on_checkpoint(self.ledger.checkpointed)  # the daemon's lease-table write
            self._send(answer)

    def _send(self, line: bytes) -> None:
        self.stdin.write(line + b"\n")
        self.stdin.flush()


def _reap(proc: subprocess.Popen[bytes]) -> tuple[float, int]:
    """Wait for the child with wait4 (Popen's wait discards the rusage)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, proc.returncode


def _cpu(p: psutil.Process) -> CpuTimes:
    t = p.cpu_times()
    return CpuTimes(t.user, t.system, t.children_user, t.children_system)


def _descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def _cpu_if_alive(p: psutil.Process) -> CpuTimes | None:
    """An orphan's CPU (psutil checks the pid was not reused), None if it has gone."""
    try:
        return _cpu(p) if p.is_running() else None
    except psutil.NoSuchProcess:
        return None


def _kill_session(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
