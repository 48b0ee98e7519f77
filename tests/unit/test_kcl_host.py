"""The shard host's pure parts: reading a line's action, its answers, reasons, backoff."""

from __future__ import annotations

import fcntl
import io
import json
import os
import signal
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from consumer.bench import kcl_messages as km
from consumer.kcl.host import (
    BACKOFF_CAP_S,
    FAILURE_WINDOW_S,
    PIPE_BYTES,
    FailureHistory,
    action_of,
    awaits_status,
    backoff_s,
    exit_reason,
    recent,
    status_line,
    widen_pipe,
)
from consumer.records.model import Position


def _kclpy_line(message: dict[str, object]) -> bytes:
    """What amazon_kclpy writes: its own _IOHandler, on a bytes sink."""
    from amazon_kclpy.kcl import _IOHandler

    out = io.StringIO()
    _IOHandler(None, out, None).write_action(message)
    return out.getvalue().encode()


def test_the_daemons_lines_give_their_action() -> None:
    record = km.KclRecord(b'{"action": "fake"}', "k", Position(km.SEQUENCE_BASE, 0), 1)
    assert action_of(km.initialize_line() + b"\n") == "initialize"
    assert action_of(km.process_records_line([record] * 3, 5)) == "processRecords"
    assert action_of(km.shutdown_requested_line()) == "shutdownRequested"
    assert action_of(km.checkpoint_answer("1", 0, None)) == "checkpoint"
    assert action_of(b'{"action":"leaseLost"}\n') == "leaseLost"


def test_the_processors_lines_give_their_action_and_blank_lines_none() -> None:
    line = _kclpy_line({"action": "status", "responseFor": "processRecords"})
    assert line.startswith(b"\n") and line.endswith(b"\n")
    blank, message = io.BytesIO(line).readlines()  # as the host's readline splits it
    assert action_of(blank) is None and action_of(message) == "status"
    ask = _kclpy_line({"action": "checkpoint", "sequenceNumber": "12", "subSequenceNumber": 0})
    assert action_of(ask.lstrip(b"\n")) == "checkpoint"
    assert action_of(b"a library printing to stdout\n") is None


def test_a_line_with_action_later_is_parsed_whole() -> None:
    line = json.dumps({"shardId": "s" * 80, "action": "initialize"}).encode()
    assert action_of(line) == "initialize"
    assert action_of(b'{"no": "action"}') is None and action_of(b"{broken") is None


@given(st.sampled_from(["initialize", "processRecords", "leaseLost", "shardEnded",
                        "shutdownRequested"]))
def test_a_status_answers_the_action_as_amazon_kclpy_would(action: str) -> None:
    line = status_line(action)
    assert json.loads(line) == {"action": "status", "responseFor": action}
    assert line.startswith(b"\n") and line.endswith(b"\n")
    assert awaits_status(action) and not awaits_status("checkpoint") and not awaits_status(None)


def test_exit_reasons_are_short_labels() -> None:
    assert exit_reason(-signal.SIGKILL, "") == "signal:SIGKILL"
    assert exit_reason(-signal.SIGSEGV, "") == "signal:SIGSEGV"
    assert exit_reason(1, "") == "exit:1"
    assert exit_reason(70, "auth:AccessDenied") == "auth:AccessDenied"


@given(st.integers(min_value=0, max_value=1_000))
def test_backoff_grows_from_nothing_and_is_bounded(n: int) -> None:
    delay = backoff_s(n)
    assert 0 <= delay <= BACKOFF_CAP_S
    assert (delay == 0) == (n <= 1)
    assert backoff_s(n + 1) >= delay


def test_recent_keeps_the_window_only() -> None:
    now = 10_000.0
    assert recent([now - FAILURE_WINDOW_S, now - 5, now, now + 1, now - 1], now) == [
        now - 5, now - 1, now]


def test_failure_history_counts_recent_failures_per_shard(tmp_path: Path) -> None:
    history = FailureHistory(tmp_path / "f")
    assert history.record("s-1", 1_000.0) == [1_000.0]
    assert history.record("s-2", 1_001.0) == [1_001.0]
    assert history.record("s-1", 1_002.0) == [1_000.0, 1_002.0]
    assert history.record("s-1", 1_000.0 + FAILURE_WINDOW_S + 1) == [1_002.0, 1_601.0]
    (tmp_path / "f" / "s-2.json").write_text("{torn")
    assert history.record("s-2", 2_000.0) == [2_000.0]  # a bad file is a fresh start
    assert FailureHistory(None).record("s-1", 5.0) == [5.0]


def test_the_host_imports_the_standard_library_only() -> None:
    """What the daemon spawns per shard stays small: no third-party module at start (the
    failure path imports boto3 and prometheus_client when it needs them)."""
    import subprocess
    import sys

    code = ("import sys; before = set(sys.modules); import consumer.kcl.__main__; "
            "print('\\n'.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "consumer" in out
    foreign = {m for m in out if m not in sys.stdlib_module_names and m != "consumer"}
    assert foreign == set()


def test_widen_pipe_lets_a_pipe_hold_a_whole_batch_line(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        widen_pipe(w)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        os.set_blocking(w, False)  # a full pipe fails the write instead of waiting
        line = b"x" * (300 << 10)
        assert os.write(w, line) == len(line)  # whole: a 64 kB pipe takes 64 kB of it
    finally:
        os.close(r)
        os.close(w)
    with open(tmp_path / "not-a-pipe", "wb") as f:
        widen_pipe(f.fileno())  # best effort: no error
