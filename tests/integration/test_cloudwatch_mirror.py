"""The "put" mirror against a real moto server, fed by real shard processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from consumer.local.procs import free_port
from consumer.metrics.cloudwatch import PUT_BATCH, build_mirror
from consumer.metrics.registry import ENV_VAR

pytestmark = pytest.mark.integration

NAMESPACE = "AetherStream/Test"
STATIC = [{"Name": "Application", "Value": "app"}, {"Name": "Stream", "Value": "events"}]

# A stand-in shard processor: counts argv[2] Kinesis records of 2 user records each.
CHILD = textwrap.dedent(
    """
    import sys
    from consumer.metrics import registry as r
    r.assert_multiprocess_mode()
    m = r.ShardMetrics(sys.argv[1])
    n = int(sys.argv[2])
    m.batch_received([s for s in range(n) for _ in (0, 1)], [10] * (2 * n))
    r.MILLIS_BEHIND_LATEST.labels(sys.argv[1]).set(float(sys.argv[3]))
    for i in range(int(sys.argv[4])):  # many series, to exceed one PutMetricData request
        r.RECORDS_QUARANTINED.labels(sys.argv[1], f"reason{i}").inc()
    if len(sys.argv) > 5:  # stay alive (keeping live gauges) until stdin closes
        sys.stderr.write("ready\\n"); sys.stderr.flush()
        sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def cloudwatch(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return boto3.client("cloudwatch", endpoint_url=moto_url, region_name="us-east-1")


def _child(directory: Path, shard: str, records: int, behind: float, reasons: int = 0) -> None:
    env = dict(os.environ, **{ENV_VAR: str(directory)})
    subprocess.run(
        [sys.executable, "-c", CHILD, shard, str(records), str(behind), str(reasons)],
        env=env, check=True, timeout=30,
    )


def _held_child(directory: Path, shard: str, behind: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{ENV_VAR: str(directory)})
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, shard, "1", str(behind), "0", "hold"],
        env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stderr.readline() == b"ready\n"
    return proc


def _stats(client: Any, name: str, dims: list[dict[str, str]]) -> dict[str, float]:
    now = datetime.now(UTC)
    queries = [
        {
            "Id": stat.lower(),
            "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": dims},
                "Period": 60, "Stat": stat,
            },
        }
        for stat in ("Sum", "SampleCount", "Maximum", "Minimum")
    ]
    resp = client.get_metric_data(
        MetricDataQueries=queries,
        StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=5),
    )
    # The two publishes may fall into different periods: combine each statistic across them.
    combine: dict[str, Callable[[list[float]], float]] = {
        "sum": sum, "samplecount": sum, "maximum": max, "minimum": min,
    }
    return {r["Id"]: combine[r["Id"]](r["Values"]) for r in resp["MetricDataResults"]}


def test_put_mirror_publishes_counter_deltas_and_gauges(
    cloudwatch: Any, moto_url: str, tmp_path: Path
) -> None:
    requests: list[int] = []
    cloudwatch.meta.events.register(
        "provide-client-params.cloudwatch.PutMetricData",
        lambda params, **_: requests.append(len(params["MetricData"])),
    )
    mirror = build_mirror(
        "put", multiproc_dir=str(tmp_path), namespace=NAMESPACE, application="app",
        stream_name="events", client=cloudwatch,
    )
    assert mirror is not None
    _child(tmp_path, "shardId-0", records=3, behind=1500.0, reasons=PUT_BATCH)
    _child(tmp_path, "shardId-1", records=4, behind=20.0)
    live = _held_child(tmp_path, "shardId-2", behind=1500.0)
    try:
        first = mirror.publish_once()
    finally:
        live.communicate(timeout=10)
    assert first > PUT_BATCH and len(requests) == 2 and max(requests) <= PUT_BATCH

    _child(tmp_path, "shardId-0", records=5, behind=700.0)
    mirror.publish_once()

    shard0 = [*STATIC, {"Name": "Shard", "Value": "shardId-0"}]
    kinesis = _stats(cloudwatch, "kinesis_records_received", shard0)
    # Deltas 3 then 5: their sum is the total, and neither publish re-sent the first 3.
    assert kinesis == {"sum": 8, "samplecount": 2, "maximum": 5, "minimum": 3}
    user = _stats(cloudwatch, "user_records_received", shard0)
    assert user["sum"] == 16 and user["maximum"] == 10
    shard1 = [*STATIC, {"Name": "Shard", "Value": "shardId-1"}]
    kinesis1 = _stats(cloudwatch, "kinesis_records_received", shard1)
    assert kinesis1 == {"sum": 4, "samplecount": 2, "maximum": 4, "minimum": 0}
    # A gauge is published while its process lives; exited processes' gauges are reaped.
    shard2 = [*STATIC, {"Name": "Shard", "Value": "shardId-2"}]
    behind = _stats(cloudwatch, "millis_behind_latest", shard2)
    assert behind == {"sum": 1500, "samplecount": 1, "maximum": 1500, "minimum": 1500}
    with pytest.raises(ValueError):  # no datapoints at all for the exited shardId-0
        _stats(cloudwatch, "millis_behind_latest", shard0)

    pages = cloudwatch.get_paginator("list_metrics").paginate(
        Namespace=NAMESPACE, MetricName="records_quarantined"
    )
    series = {
        tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"]))
        for page in pages for m in page["Metrics"]
    }  # moto lists a metric once per datapoint, CloudWatch once per series
    assert len(series) == PUT_BATCH
    assert {name for name, _ in next(iter(series))} == {"Application", "Stream", "Shard", "Reason"}
