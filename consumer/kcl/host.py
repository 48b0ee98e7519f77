"""The shard host: what the MultiLangDaemon runs per shard (`python -m consumer.kcl`).

KCL 2.x's MultiLangDaemon answers a child process that dies, or breaks the protocol, with
System.exit for the whole JVM: one crashed, OOM-killed or fatally failing record processor
would end every shard of the worker. So the daemon's child is this small relay, and the record
processor (`python -m consumer.kcl.worker`) is the relay's child:

- daemon lines go to the processor and its lines back, whole lines only, untouched; the relay
  only reads each line's action (the first key of what both sides write) to know which
  message awaits a `status`;
- when the processor dies before the daemon closed stdin (a non-zero exit, a signal, an exit
  on a fatal error), the host answers the pending message itself, never checkpoints, answers
  every further message with a plain status, records the failure (metrics, the shard's
  recent failures), and after a backoff that grows with the recent failures it hands the lease
  back: leaseOwner removed and leaseCounter bumped in KCL's lease table, on condition that
  this worker still owns it. KCL's renewer then loses the lease and sends leaseLost, the lease
  taker sees an unowned lease and takes it (here or on another worker), and the new processor
  resumes from the last checkpoint. The other shards are untouched.

Only the standard library is imported on the relay path; the failure path imports the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("consumer.kcl.host")
# When the daemon spawned this shard's host, read first: it orders two tenures of one worker
# over one shard (consumer/sinks/fence.py), and the processor it starts inherits it.
SPAWNED_NS = time.time_ns()

WORKER_ARGV = (sys.executable, "-m", "consumer.kcl.worker")
SPAWNED_ENV = "AETHERSTREAM_SPAWNED_NS"  # the host's spawn time: the tenure's (sinks/fence.py)
REASON_FD_ENV = "AETHERSTREAM_FAILURE_FD"  # where the processor writes why it exits
FAILURES_SUBDIR = "processor-failures"  # under PROMETHEUS_MULTIPROC_DIR: recent failures

# Backoff before the lease is handed back: none after one failure in the window (a one-off
# crash resumes at once), then BASE, 2 x BASE, ... up to CAP. The lease stays held meanwhile,
# so no worker spins on the shard.
FAILURE_WINDOW_S = 600.0
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 120.0
HANDBACK_RETRY_CAP_S = 10.0
EOF_HANDBACK_S = 15.0  # how long a host whose daemon closed stdin finishes its hand-back
# Pipe capacity for the daemon's lines, into the host and on to the processor. Kernel memory:
# with the default limit (fs.pipe-user-pages-soft, 64 MiB per user) 64 shards' pipes fit.
PIPE_BYTES = 512 << 10


# --- the protocol, as bytes (pure) --------------------------------------------------------------
def action_of(line: bytes) -> str | None:
    """The action of a protocol line without parsing all of it: the daemon (Jackson, from its
    message classes) and amazon_kclpy (json.dumps of a dict built action first) both write
    "action" as the first key. A line that does not is parsed whole."""
    key = line.find(b'"action"', 0, 64)
    if key < 0:
        return _parsed_action(line)
    colon = line.find(b":", key + 8, key + 16)
    opening = line.find(b'"', colon + 1, colon + 8) if colon >= 0 else -1
    closing = line.find(b'"', opening + 1, opening + 40) if opening >= 0 else -1
    if closing < 0:
        return _parsed_action(line)
    return line[opening + 1:closing].decode("ascii", "replace")


def _parsed_action(line: bytes) -> str | None:
    text = line.strip()
    if not text.startswith(b"{"):
        return None  # a blank line (amazon_kclpy wraps each message in newlines) or noise
    try:
        message = json.loads(text)
    except ValueError:
        return None
    action = message.get("action") if isinstance(message, dict) else None
    return action if isinstance(action, str) else None


def status_line(response_for: str) -> bytes:
    return b'\n{"action": "status", "responseFor": "' + response_for.encode("ascii") + b'"}\n'


def awaits_status(action: str | None) -> bool:
    """A daemon message the daemon waits on; `checkpoint` answers the processor's request."""
    return action is not None and action != "checkpoint"


def exit_reason(returncode: int, note: str) -> str:
    """A short, bounded label for why the processor ended: the kind and code it wrote before
    exiting on a fatal error, or the signal (SIGKILL is also the kernel's OOM killer), or the
    exit status."""
    if note:
        return note
    if returncode < 0:
        try:
            return f"signal:{signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal:{-returncode}"
    return f"exit:{returncode}"


def recent(failures: Sequence[float], now: float, window_s: float = FAILURE_WINDOW_S
           ) -> list[float]:
    return sorted(t for t in failures if now - window_s < t <= now)


def backoff_s(recent_failures: int, base_s: float = BACKOFF_BASE_S,
              cap_s: float = BACKOFF_CAP_S) -> float:
    """How long a shard that failed `recent_failures` times in the window waits."""
    if recent_failures <= 1:
        return 0.0
    return min(cap_s, base_s * 2.0 ** (recent_failures - 2))


# --- the shard's recent failures, in a file per shard (survives the host) ----------------------
class FailureHistory:
    def __init__(self, directory: Path | None) -> None:
        self._dir = directory

    def record(self, shard: str, when: float) -> list[float]:
        """Add a failure; returns the shard's failures within the window, this one included."""
        if self._dir is None:
            return [when]
        path = self._dir / f"{shard}.json"
        try:
            earlier = json.loads(path.read_text())["failures"]
        except (OSError, ValueError, KeyError, TypeError):
            earlier = []
        failures = recent([*earlier, when], when)
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"shard": shard, "failures": failures}))
        os.replace(tmp, path)  # atomic: two hosts of one shard never read half a file
        return failures


def history_dir(env: dict[str, str] | os._Environ[str]) -> Path | None:
    mp = env.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(mp) / FAILURES_SUBDIR if mp else None


# --- the relay (the imperative shell) -----------------------------------------------------------
@dataclass
class _State:
    pending: str | None = None  # the daemon message awaiting a status
    failed: bool = False  # the processor died: the host answers from now on
    closing: bool = False  # the daemon closed stdin: the processor's exit is expected
    shard: str = "unknown"


class ShardHost:
    def __init__(self, child_argv: Sequence[str], daemon_in: IO[bytes], daemon_out: IO[bytes],
                 hand_back: Callable[[str], None], history: FailureHistory,
                 record_failure: Callable[[str, str], None]) -> None:
        self._argv = list(child_argv)
        self._in = daemon_in
        self._out = daemon_out
        self._hand_back = hand_back
        self._history = history
        self._record_failure = record_failure
        self._state = _State()
        self._lock = threading.Lock()
        self._out_lock = threading.Lock()
        # leaseLost: the lease moved on, maybe to this worker's next tenure: never hand it back.
        self._lease_lost = threading.Event()
        self._eof = threading.Event()  # the daemon is done with the shard: hand back at once
        self._wake = threading.Event()  # either of the two

    def run(self) -> int:
        reason_r, reason_w = os.pipe()
        env = dict(os.environ)
        env[SPAWNED_ENV] = str(SPAWNED_NS)
        env[REASON_FD_ENV] = str(reason_w)
        child = subprocess.Popen(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env=env, pass_fds=(reason_w,))
        os.close(reason_w)  # the processor holds the only write end: EOF once it is gone
        assert child.stdin is not None and child.stdout is not None
        widen_pipe(child.stdin.fileno())
        reader = threading.Thread(target=self._from_child, args=(child, reason_r),
                                  name="from-processor", daemon=True)
        reader.start()
        self._to_child(child.stdin)
        with self._lock:
            self._state.closing = True
            failed = self._state.failed
        self._eof.set()
        self._wake.set()
        _close_quietly(child.stdin)
        if failed:
            reader.join(EOF_HANDBACK_S)  # a hand-back in flight finishes, bounded
            return 0  # the shard's failure is recorded; the worker carries on
        code = child.wait()
        reader.join(5.0)
        return code

    # daemon -> processor, on the main thread
    def _to_child(self, child_in: IO[bytes]) -> None:
        while line := self._in.readline():
            action = action_of(line)
            with self._lock:
                state = self._state
                if action == "initialize":
                    state.shard = _shard_of(line)
                answer = state.failed and awaits_status(action)
                if not state.failed and awaits_status(action):
                    state.pending = action
            if action == "leaseLost":
                self._lease_lost.set()
                self._wake.set()
            if answer:
                assert action is not None
                self._send(status_line(action))
                continue
            try:
                child_in.write(line)
                child_in.flush()
            except (BrokenPipeError, ValueError):
                pass  # the processor died; the reader thread answers the pending message

    # processor -> daemon, on the reader thread
    def _from_child(self, child: subprocess.Popen[bytes], reason_r: int) -> None:
        assert child.stdout is not None
        out = child.stdout
        while (line := out.readline()).endswith(b"\n"):  # a torn last line is never relayed
            if action_of(line) == "status":
                with self._lock:
                    self._state.pending = None
            self._send(line)
        with self._lock:
            failed = not self._state.closing
            self._state.failed = failed
            pending, self._state.pending = self._state.pending, None
            shard = self._state.shard
        if not failed:
            os.close(reason_r)
            return
        if pending is not None:
            self._send(status_line(pending))
        code = child.wait()
        self._failed(shard, exit_reason(code, _read_note(reason_r)), code)

    def _failed(self, shard: str, reason: str, code: int) -> None:
        now = time.time()
        failures = self._history.record(shard, now)
        delay = backoff_s(len(failures))
        log.error("record processor died; answering for it and handing the lease back",
                  extra={"shard": shard, "reason": reason, "exit": code,
                         "recent_failures": len(failures), "backoff_s": delay})
        try:
            self._record_failure(shard, reason)
        except Exception:  # metrics are not worth the lease: carry on
            log.exception("could not record the failure in the metrics")
        self._wake.wait(delay)  # the lease stays held, unprocessed, for the backoff
        self._release(shard)

    def _release(self, shard: str) -> None:
        pause = 0.5
        while not self._lease_lost.is_set():
            try:
                self._hand_back(shard)
                return
            except Exception:  # DynamoDB is down: KCL's renewals fail too; keep trying
                log.exception("lease hand-back failed; retrying", extra={"shard": shard})
            if self._eof.is_set() or self._lease_lost.wait(pause):
                return  # the daemon is done with the shard: its lease expires by itself
            pause = min(HANDBACK_RETRY_CAP_S, pause * 2)

    def _send(self, line: bytes) -> None:
        with self._out_lock, contextlib.suppress(BrokenPipeError):  # the daemon has gone
            self._out.write(line)
            self._out.flush()


def widen_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """Let a pipe hold a whole processRecords line (about 300 kB for 1,000 records), so the
    line crosses it in one write and one read instead of a wake-up per 64 kB. Best effort:
    not a pipe, or over the user's pipe limit, and it stays as it was."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def _shard_of(line: bytes) -> str:
    try:
        return str(json.loads(line)["shardId"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _read_note(fd: int) -> str:
    os.set_blocking(fd, False)  # a grandchild could hold the write end; never wait for it
    try:
        data = os.read(fd, 512)
    except BlockingIOError:
        data = b""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip().splitlines()[0][:120] if data.strip() else ""


def _close_quietly(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        stream.close()


# --- the failure path's effects (imports the heavy modules only when a processor died) ---------
def hand_back_lease(shard: str) -> None:
    """Remove this worker as the lease's owner, on condition that the lease is still the one
    it read (owner and counter: a retry after an ambiguous failure never takes the lease from
    this worker's next tenure), and bump the counter so that KCL's renewer, which expects the
    counter it last wrote, loses the lease at its next renewal."""
    from consumer.aws import client
    from consumer.config import load_settings

    worker = os.environ.get("AETHERSTREAM_KCL_WORKER_ID", "")
    table = load_settings().stream.app_name
    ddb = client("dynamodb")
    for _ in range(10):  # the renewer bumps the counter every failover_time / 3
        item = ddb.get_item(TableName=table, Key={"leaseKey": {"S": shard}},
                            ConsistentRead=True).get("Item", {})
        if item.get("leaseOwner", {}).get("S") != worker:
            log.warning("lease not ours any more; nothing to hand back", extra={"shard": shard})
            return
        counter = item["leaseCounter"]["N"]
        try:
            ddb.update_item(
                TableName=table, Key={"leaseKey": {"S": shard}},
                UpdateExpression="REMOVE leaseOwner SET leaseCounter = leaseCounter + :one",
                ConditionExpression="leaseOwner = :me AND leaseCounter = :read",
                ExpressionAttributeValues={":me": {"S": worker}, ":read": {"N": counter},
                                           ":one": {"N": "1"}},
            )
        except ddb.exceptions.ConditionalCheckFailedException:
            continue  # renewed in between: read again
        log.warning("lease handed back; KCL re-leases the shard from its checkpoint",
                    extra={"shard": shard, "table": table, "lease_counter": int(counter) + 1})
        return
    raise RuntimeError(f"lease of {shard} kept changing under the hand-back")


def record_failure_metrics(shard: str, reason: str) -> None:
    from consumer.metrics import registry as m

    m.assert_multiprocess_mode()
    m.record_processor_failure(shard, reason, time.time())


def main(argv: Sequence[str] = ()) -> int:
    """`python -m consumer.kcl [child argv...]`: the default child is the record processor."""
    daemon_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stdout is the protocol channel: anything else printed goes to stderr
    sys.stdout = sys.stderr
    from consumer.metrics.logs import configure_logging

    configure_logging(os.environ.get("AETHERSTREAM_LOG_LEVEL", "INFO"), component="host")
    # A large buffer: one read per processRecords line of up to 1 MB, not one per 8 kB.
    daemon_in = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
    widen_pipe(daemon_in.fileno())
    host = ShardHost(list(argv) or WORKER_ARGV, daemon_in, daemon_out,
                     hand_back_lease, FailureHistory(history_dir(os.environ)),
                     record_failure_metrics)
    try:
        return host.run()
    finally:
        logging.shutdown()

