"""JSON log lines with context, and the daemon's output converted into them."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.metrics.logs import (
    bind_context,
    configure_logging,
    current_context,
    java_log_line_to_json,
    log_context,
    reset_context,
)

LOGBACK = Path(__file__).resolve().parents[2] / "consumer" / "metrics" / "logback.xml"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_lines_are_json_with_static_bound_and_block_context(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("debug", stream=out, component="processor")
    log = logging.getLogger("consumer.test")
    token = bind_context(shard="shardId-7")
    try:
        with log_context(batch=3, sequence="4959033827149025660855969253836157109592157598913"):
            log.info("batch %s done", 3, extra={"records": 12})
        log.warning("after the batch")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        reset_context(token)
    assert current_context() == {}

    first, second, third = _lines(out.getvalue())
    assert list(first)[:4] == ["ts", "level", "logger", "msg"]
    assert first["ts"].endswith("Z") and "T" in first["ts"]
    assert first["level"] == "INFO" and first["logger"] == "consumer.test"
    assert first["msg"] == "batch 3 done"
    assert first["component"] == "processor" and first["shard"] == "shardId-7"
    assert first["batch"] == 3 and first["records"] == 12
    assert first["sequence"].startswith("4959")
    assert "batch" not in second and second["shard"] == "shardId-7"
    assert "ValueError: boom" in third["exc"]


def test_context_cannot_overwrite_the_fixed_fields(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out, msg="static", logger="static")
    with log_context(logger="ctx", ts="ctx"):
        logging.getLogger("x").info("real")
    (line,) = _lines(out.getvalue())
    assert (line["msg"], line["level"], line["logger"]) == ("real", "INFO", "x")
    assert line["ts"] != "ctx"


def test_default_stream_is_stderr_never_stdout(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    logging.getLogger("x").info("to stderr", extra={"n": 1})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert _lines(captured.err)[0]["n"] == 1


def test_context_does_not_leak_into_other_threads() -> None:
    seen: list[dict[str, Any]] = []
    with log_context(shard="a"):
        worker = threading.Thread(target=lambda: seen.append(current_context()))
        worker.start()
        worker.join()
    assert seen == [{}]


def test_logback_event_line() -> None:
    line = (
        "KCL|2026-11-26T03:18:43.739Z|ERROR|multi-lang-daemon-0000|"
        "software.amazon.kinesis.coordinator.Scheduler|Caught exception | when initializing"
        " java.lang.RuntimeException: x ⏎ \tat a.b(C.java:1)\n"
    )
    rec = java_log_line_to_json(line)
    assert rec == {
        "ts": "2026-11-26T03:18:43.739Z", "level": "ERROR",
        "logger": "software.amazon.kinesis.coordinator.Scheduler",
        "msg": "Caught exception | when initializing java.lang.RuntimeException: x\n"
               "\tat a.b(C.java:1)",
        "java_thread": "multi-lang-daemon-0000",
    }
    assert java_log_line_to_json("KCL|t|WARN|main|L|m")["level"] == "WARNING"


def test_processor_json_lines_pass_through_and_unwrap() -> None:
    ours = '{"ts": "t", "level": "WARNING", "logger": "consumer.kcl", "msg": "m", "shard": "s"}'
    assert java_log_line_to_json(ours) == json.loads(ours)
    wrapped = f"KCL|t|ERROR|th|L|Received error line from subprocess [{ours}] for shard s"
    assert java_log_line_to_json(wrapped)["level"] == "WARNING"
    plain = java_log_line_to_json(
        "KCL|t|ERROR|th|L|Received error line from subprocess [oops] for shard s-1"
    )
    assert plain["msg"] == "oops" and plain["shard"] == "s-1"
    # Keys that LogRecord owns are renamed, so the dict is safe as extra=.
    assert "thread_" in java_log_line_to_json('{"msg": "m", "thread": 1}')


def test_raw_output_lines() -> None:
    assert java_log_line_to_json("\tat a.b(C.java:1)")["level"] == "ERROR"
    assert java_log_line_to_json("java.lang.IllegalArgumentException: x")["level"] == "ERROR"
    assert java_log_line_to_json("Usage: amazon-kinesis-client") == {
        "level": "INFO", "logger": "kcl.daemon.output", "msg": "Usage: amazon-kinesis-client",
    }


def test_converted_dicts_log_without_clashes(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    for line in ("KCL|2026-01-01T00:00:00.000Z|INFO|main|a.B|hello",
                 '{"ts": "x", "level": "INFO", "logger": "p", "msg": "m", "shard": "s"}'):
        rec = java_log_line_to_json(line)
        extra = {k: v for k, v in rec.items() if k not in ("msg", "level")}
        logging.getLogger("kcl.daemon").info(rec["msg"], extra=extra)
    daemon, relayed = _lines(out.getvalue())
    assert (daemon["ts"], daemon["logger"], daemon["java_thread"]) == (
        "2026-01-01T00:00:00.000Z", "a.B", "main")
    assert (relayed["ts"], relayed["logger"], relayed["shard"]) == ("x", "p", "s")


def _kcl_classpath() -> str | None:
    try:
        import amazon_kclpy
    except ImportError:
        return None
    jars = Path(amazon_kclpy.__file__).parent / "jars"
    return f"{jars}/*" if any(jars.glob("*.jar")) else None


@pytest.mark.integration
def test_real_daemon_output_with_our_logback(tmp_path: Path) -> None:
    classpath, java = _kcl_classpath(), shutil.which("java")
    if classpath is None or java is None:
        pytest.skip("needs java and the KCL jars")
    props = tmp_path / "p.properties"
    props.write_text(
        "executableName = /bin/true\nstreamName = s\napplicationName = a\n"
        "regionName = us-east-1\nAWSCredentialsProvider = DefaultAWSCredentialsProviderChain\n"
        "kinesisEndpoint = http://127.0.0.1:1\ndynamoDBEndpoint = http://127.0.0.1:1\n"
        "metricsLevel = NONE\n"
    )
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y")
    proc = subprocess.Popen(
        [java, "-cp", classpath, "software.amazon.kinesis.multilang.MultiLangDaemon",
         "--properties-file", str(props), "--log-configuration", str(LOGBACK)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # until the first failed lease-table call, with its trace
            records.append(java_log_line_to_json(line))
            if records[-1]["level"] == "ERROR" or time.monotonic() > deadline:
                break
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert all("java_thread" in r for r in records)  # every line was a logback event
    assert any(r["logger"].endswith("KinesisClientLibConfigurator") for r in records)
    error = records[-1]
    assert error["level"] == "ERROR" and "\n\tat " in error["msg"]
