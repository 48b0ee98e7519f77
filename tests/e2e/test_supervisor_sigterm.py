"""`aetherstream run` as a real process: SIGTERM makes every processor flush and checkpoint.

Real components: the supervisor process, the KCL daemon (Java), four processor processes,
kinesis-mock, dynalite and moto S3. The flush hints are set so high that nothing is written
before the signal: every archived record below was flushed by shutdown_requested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.config import load_settings, to_env, with_overrides
from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.procs import free_port
from consumer.local.producer import ProducerSpec, produce
from consumer.local.reconcile import ObjectCounter
from consumer.local.stack import aws_env
from tests.e2e.test_kcl_archive import scrape

pytestmark = pytest.mark.e2e

STREAM = "sigterm-stream"
SPEC = ProducerSpec(records=1200, kpl_fraction=0.5, seed=3)
GRACE_MS = 20_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("stack"), stream=STREAM, shards=4,
                    bucket=STREAM) as s:
        s.prepare_leases(STREAM, STREAM)  # KCL skips its random wait on an empty lease table
        yield s


def run_env(stack: LocalStack, port: int) -> dict[str, str]:
    settings = with_overrides(
        load_settings(None, env={}),
        stream={"name": STREAM, "app_name": STREAM},
        s3={"bucket": STREAM},
        kcl={"failover_time_ms": 5000, "shutdown_grace_ms": GRACE_MS},
        flush={"max_records": 1_000_000, "max_bytes": 1 << 30, "max_age_ms": 3_600_000},
        metrics={"port": port},
    )
    return {**os.environ, **aws_env(stack.endpoints), **to_env(settings)}


def start_run(stack: LocalStack, run_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = (run_dir / "run.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "run", "--run-dir", str(run_dir)],
        env=run_env(stack, port), stdout=log, stderr=subprocess.STDOUT,
    )


def wait_metric(url: str, name: str, value: float, timeout_s: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            m = scrape(url)
            if m.get(name, 0) >= value:
                return m
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, f"{name} did not reach {value}"
        time.sleep(1)


def wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=5).status == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(1)
    raise AssertionError(f"{url} never became ready")


def test_sigterm_flushes_checkpoints_and_exits_within_grace(
    stack: LocalStack, tmp_path: Path
) -> None:
    port = free_port()
    proc = start_run(stack, tmp_path, port)
    metrics = f"http://127.0.0.1:{port}/metrics"
    try:
        produce(boto3_client("kinesis", stack.endpoints), STREAM, SPEC, progress=False)
        wait_metric(metrics, "aetherstream_user_records_received_total", SPEC.records, 120)
        archive = ObjectCounter(boto3_client("s3", stack.endpoints), STREAM, "raw/")
        archive.refresh()
        assert archive.distinct == 0  # all still buffered: the hints were not reached

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=GRACE_MS / 1000 + 30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert took < GRACE_MS / 1000 + 15  # the supervisor's own bound, below ECS stopTimeout

    archive.refresh()
    assert archive.distinct == SPEC.records and archive.duplicates == 0
    last_by_shard: dict[str, int] = {}
    for row in archive.rows:
        last_by_shard[row["shard"]] = max(last_by_shard.get(row["shard"], 0), int(row["sequence"]))
    leases = boto3_client("dynamodb", stack.endpoints).scan(TableName=STREAM)["Items"]
    checkpoints = {item["leaseKey"]["S"]: item["checkpoint"]["S"] for item in leases}
    assert {k: int(v) for k, v in checkpoints.items()} == last_by_shard

    # A restart resumes after the checkpoints: it takes the leases and processes nothing.
    port2 = free_port()
    again = start_run(stack, tmp_path, port2)
    try:
        wait_ready(f"http://127.0.0.1:{port2}/readyz", 120)
        m = wait_metric(f"http://127.0.0.1:{port2}/metrics", "aetherstream_leases_held", 4, 120)
        time.sleep(3)  # a few empty polls per shard after taking all four leases
        m = scrape(f"http://127.0.0.1:{port2}/metrics")
        assert m.get("aetherstream_user_records_received_total", 0) == 0
        assert m["aetherstream_leases_held"] == 4
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=GRACE_MS / 1000 + 30)
