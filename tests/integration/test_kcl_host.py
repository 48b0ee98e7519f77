"""The shard host (`python -m consumer.kcl`) between the daemon's protocol and real amazon_kclpy
record processors, over pipes, the way the MultiLangDaemon runs it.

The daemon's side is the processor benchmark's driver (consumer/bench/kcl_driver.py: KCL's
message shapes and checkpoint rules); KCL's lease table is a real DynamoDB protocol server
(moto). The processors are small amazon_kclpy programs written for the test, one of which
exits through the real `exit_on_error` of consumer/kcl/processor.py on a real botocore
AccessDenied; the host and its hand-back are what is under test.
"""

from __future__ import annotations

import gzip
import os
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from consumer.bench import kcl_messages as km
from consumer.bench.kcl_driver import Feed, RunResult, drive
from consumer.kcl.host import FailureHistory, ShardHost, backoff_s
from consumer.metrics.health import HealthChecks
from consumer.metrics.registry import merged_registry
from consumer.records.model import Position
from tests.support.servers import S3Endpoint, moto_s3

ROOT = Path(__file__).resolve().parents[2]
SHARD = km.SHARD_ID
WORKER = "worker-under-test"
TABLE = "host-test-app"


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:  # one moto server speaks DynamoDB as well
        yield endpoint


def _ddb(moto: S3Endpoint) -> Any:
    return boto3.client("dynamodb", endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def lease(moto: S3Endpoint) -> Iterator[Any]:
    """KCL's lease table with this worker holding the shard, as KCL leaves it."""
    ddb = _ddb(moto)
    ddb.create_table(TableName=TABLE, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}])
    ddb.put_item(TableName=TABLE, Item={"leaseKey": {"S": SHARD}, "leaseOwner": {"S": WORKER},
                                        "leaseCounter": {"N": "7"},
                                        "checkpoint": {"S": "TRIM_HORIZON"}})
    yield ddb
    ddb.delete_table(TableName=TABLE)


def _env(moto: S3Endpoint, mp_dir: Path) -> dict[str, str]:
    mp_dir.mkdir(exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
            "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
            "AWS_ENDPOINT_URL_DYNAMODB": moto.url, "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AETHERSTREAM_KCL_WORKER_ID": WORKER, "AETHERSTREAM_STREAM_APP_NAME": TABLE}


def feed(n: int = 2_500, batch: int = 500) -> Feed:
    recs = km.kinesis_records([(f"dev-{i % 7}", b'{"v": %d}' % i, True) for i in range(n)],
                              1_795_000_000_000, 10, 1)
    lines = [(km.process_records_line(b, 0), b[-1].position) for b in km.batches(recs, batch)]
    return Feed(km.initialize_line(), lines, n)


def script(body: str) -> list[str]:
    """A processor: amazon_kclpy's KCLProcess around a v3 processor that checkpoints each
    batch, with process_records replaced by `body` when given."""
    code = textwrap.dedent("""
        import os, signal, sys
        from amazon_kclpy import kcl
        from amazon_kclpy.v3 import processor
        class P(processor.RecordProcessorBase):
            batches = 0
            def initialize(self, i): pass
            def process_records(self, i):
                P.batches += 1
                self.handle(i)
                last = i.records[-1]
                i.checkpointer.checkpoint(last.sequence_number, last.sub_sequence_number)
            def handle(self, i): pass
            def lease_lost(self, i): pass
            def shard_ended(self, i): pass
            def shutdown_requested(self, i): i.checkpointer.checkpoint()
        """) + textwrap.dedent(body) + "\nkcl.KCLProcess(P()).run()\n"
    return [sys.executable, "-c", code]


def run(tmp_path: Path, env: dict[str, str], child: list[str], f: Feed) -> tuple[
        RunResult, list[Position]]:
    seen: list[Position] = []
    host = [sys.executable, "-m", "consumer.kcl", *child]
    result = drive("host", host, env, f, tmp_path / "host.log", 60, seen.append)
    return result, seen


def _lease_item(ddb: Any) -> dict[str, Any]:
    item: dict[str, Any] = ddb.get_item(TableName=TABLE, Key={"leaseKey": {"S": SHARD}},
                                        ConsistentRead=True)["Item"]
    return item


def _failures(mp_dir: Path) -> dict[tuple[str, str], float]:
    return {(s.labels["shard"], s.labels["reason"]): s.value
            for fam in merged_registry(mp_dir).collect() for s in fam.samples
            if s.name == "aetherstream_processor_failures_total"}


def test_the_relay_is_transparent(tmp_path: Path, moto: S3Endpoint, lease: Any) -> None:
    """Every checkpoint of a healthy processor reaches the daemon, as without the host."""
    f = feed()
    env = _env(moto, tmp_path / "mp")
    result, seen = run(tmp_path, env, [sys.executable, "-m", "consumer.bench.noop_processor"], f)
    assert result.checkpoint_ok and result.refused_checkpoints == 0
    assert seen == [p for _, p in f.batches] + [f.last]
    assert _lease_item(lease)["leaseOwner"]["S"] == WORKER  # nothing handed back
    assert _failures(tmp_path / "mp") == {}


def test_a_killed_processor_costs_its_shard_only_its_tenure(
        tmp_path: Path, moto: S3Endpoint, lease: Any) -> None:
    """SIGKILL in the third batch: the host answers for it, every later message gets a plain
    status, no checkpoint passes the second batch, the lease is handed back and the failure
    shows in the metrics and in /readyz."""
    f = feed()
    env = _env(moto, tmp_path / "mp")
    child = script("""
        def handle(self, i):
            if P.batches == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        P.handle = handle
    """)
    result, seen = run(tmp_path, env, child, f)  # would raise had the host broken protocol
    second = f.batches[1][1]
    assert seen == [f.batches[0][1], second] and result.checkpointed == second
    item = _lease_item(lease)
    assert "leaseOwner" not in item and item["leaseCounter"]["N"] == "8"
    assert item["checkpoint"]["S"] == "TRIM_HORIZON"  # the host never checkpoints itself
    assert _failures(tmp_path / "mp") == {(SHARD, "signal:SIGKILL"): 1.0}
    verdict = HealthChecks(lambda: True, 30).readiness(merged_registry(tmp_path / "mp"))
    processors = next(c for c in verdict.checks if c.name == "processors")
    assert not processors.ok and SHARD in processors.detail and "SIGKILL" in processors.detail
    assert "record processor died" in (tmp_path / "host.log").read_text()


def test_a_fatal_error_exits_through_exit_on_error_with_its_reason(
        tmp_path: Path, moto: S3Endpoint, lease: Any) -> None:
    f = feed(n=1_000)
    env = _env(moto, tmp_path / "mp")
    child = script("""
        import botocore.exceptions
        from consumer.kcl.processor import exit_on_error
        @exit_on_error
        def handle(self, i):
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
        P.handle = handle
    """)
    result, seen = run(tmp_path, env, child, f)
    assert seen == [] and result.checkpointed is None
    assert _failures(tmp_path / "mp") == {(SHARD, "auth:AccessDenied"): 1.0}
    assert "leaseOwner" not in _lease_item(lease)


def test_a_lease_another_worker_took_is_left_alone(
        tmp_path: Path, moto: S3Endpoint, lease: Any) -> None:
    lease.put_item(TableName=TABLE, Item={"leaseKey": {"S": SHARD},
                                          "leaseOwner": {"S": "other-worker"},
                                          "leaseCounter": {"N": "9"}})
    child = script("""
        def handle(self, i):
            sys.exit(3)
        P.handle = handle
    """)
    run(tmp_path, _env(moto, tmp_path / "mp"), child, feed(n=1_000))
    item = _lease_item(lease)
    assert item["leaseOwner"]["S"] == "other-worker" and item["leaseCounter"]["N"] == "9"
    assert _failures(tmp_path / "mp") == {(SHARD, "exit:3"): 1.0}


def test_a_repeated_failure_holds_the_lease_for_the_backoff(tmp_path: Path) -> None:
    """In-process host, real child, real pipes; the hand-back is recorded instead of sent (the
    DynamoDB call is the test above's), to time it against the backoff."""
    history = FailureHistory(tmp_path / "failures")
    history.record(SHARD, time.time() - 30)  # failed once already, 30 s ago
    daemon_r, host_w = os.pipe()  # host -> daemon
    host_r, daemon_w = os.pipe()  # daemon -> host
    handed: list[float] = []
    host = ShardHost(script("""
        def handle(self, i):
            os._exit(70)
        P.handle = handle
    """), os.fdopen(host_r, "rb"), os.fdopen(host_w, "wb", buffering=0),
        lambda shard: handed.append(time.monotonic()), history, lambda shard, reason: None)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(host.run()))
    thread.start()
    to_host, from_host = os.fdopen(daemon_w, "wb", buffering=0), os.fdopen(daemon_r, "rb")
    answers = []
    for line in (km.initialize_line(), feed(n=10).batches[0][0], km.process_records_line([], 0)):
        to_host.write(line + b"\n")
        while not (answer := from_host.readline()).strip():
            pass
        answers.append(answer)
    died = time.monotonic()
    assert [a.strip() for a in answers[1:]] == [
        b'{"action": "status", "responseFor": "processRecords"}'] * 2
    delay = backoff_s(2)
    assert delay > 0
    time.sleep(delay * 0.6)
    assert handed == []  # still held, unprocessed
    deadline = time.monotonic() + delay + 10
    while not handed and time.monotonic() < deadline:
        time.sleep(0.1)
    assert handed and handed[0] - died >= delay * 0.9
    to_host.write(b'{"action":"leaseLost"}\n')
    while not (answer := from_host.readline()).strip():
        pass
    assert b'"responseFor": "leaseLost"' in answer
    to_host.close()
    thread.join(20)
    assert codes == [0]


def test_the_real_record_processor_runs_behind_the_host(
        tmp_path: Path, moto: S3Endpoint, lease: Any) -> None:
    """`python -m consumer.kcl` as the daemon runs it (the default child, our processor),
    against moto's S3 and lease table: every record archived, the checkpoint at the last."""
    s3 = moto.client()
    s3.create_bucket(Bucket="host-test-archive")
    n = 2_000
    payloads = [(f"dev-{i % 7}", b'{"device_id": "dev-%d", "metric": "t", "value": %d, '
                 b'"ts": 1795000000%03d}' % (i % 7, i, i % 1000), False) for i in range(n)]
    recs = km.kinesis_records(payloads, 1_795_000_000_000, 10, 1)
    f = Feed(km.initialize_line(), [(km.process_records_line(b, 0), b[-1].position)
                                    for b in km.batches(recs, 500)], n)
    env = {**_env(moto, tmp_path / "mp"), "AWS_ENDPOINT_URL_S3": moto.url,
           "AETHERSTREAM_S3_BUCKET": "host-test-archive", "AETHERSTREAM_WINDOWS_ENABLED": "false"}
    result = drive("ours", [sys.executable, "-m", "consumer.kcl"], env, f,
                   tmp_path / "ours.log", 120, lambda p: None)
    assert result.checkpoint_ok, (tmp_path / "ours.log").read_text()[-3000:]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="host-test-archive")["Contents"]]
    archived = sum(len(gzip.decompress(s3.get_object(Bucket="host-test-archive", Key=k)[
        "Body"].read()).splitlines()) for k in keys if k.startswith("raw/"))
    assert archived == n and _failures(tmp_path / "mp") == {}
    assert _lease_item(lease)["leaseOwner"]["S"] == WORKER
