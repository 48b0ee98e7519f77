"""`aetherstream scale recommend` against moto server's Kinesis and CloudWatch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from consumer.local.procs import free_port
from consumer.scaling import main
from consumer.scaling.shell import list_shards

pytestmark = pytest.mark.integration
MOTO = Path(sys.executable).with_name("moto_server")


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    if not MOTO.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _creds(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _clients(url: str) -> tuple[Any, Any]:
    kw: dict[str, Any] = {"endpoint_url": url, "region_name": "us-east-1"}
    return boto3.client("kinesis", **kw), boto3.client("cloudwatch", **kw)


def _put(cw: Any, dims: dict[str, str], records_per_min: float, bytes_per_min: float) -> None:
    when = datetime.now(UTC) - timedelta(minutes=3)
    dimensions = [{"Name": k, "Value": v} for k, v in dims.items()]
    cw.put_metric_data(Namespace="AWS/Kinesis", MetricData=[
        {"MetricName": "IncomingRecords", "Dimensions": dimensions, "Timestamp": when,
         "Value": records_per_min, "Unit": "Count"},
        {"MetricName": "IncomingBytes", "Dimensions": dimensions, "Timestamp": when,
         "Value": bytes_per_min, "Unit": "Bytes"},
    ])


def _run(capsys: pytest.CaptureFixture[str], url: str, stream: str, *extra: str) -> Any:
    rc = main(["--stream", stream, "--endpoint-url", url, "--region", "us-east-1", "--json",
               *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_shard_level_metrics(endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    kinesis, cw = _clients(endpoint)
    kinesis.create_stream(StreamName="hot", ShardCount=4)
    kinesis.enable_enhanced_monitoring(StreamName="hot", ShardLevelMetrics=["ALL"])
    shard_ids = [sid for sid, _ in list_shards(kinesis, "hot")]
    _put(cw, {"StreamName": "hot", "ShardId": shard_ids[0]}, 60 * 900, 60 * 1000)
    _put(cw, {"StreamName": "hot", "ShardId": shard_ids[1]}, 60 * 300, 60 * 1000)
    doc = _run(capsys, endpoint, "hot", "--records-per-task-per-s", "500",
               "--max-shards-per-task", "4", "--headroom", "1")
    loads = {s["shard_id"]: s["records_per_s"] for s in doc["shards"]}
    assert loads[shard_ids[0]] == pytest.approx(900)
    assert loads[shard_ids[1]] == pytest.approx(300)
    # 1200 records/s at 500 per task: 3 tasks; the shard cap is 4, the lease floor 1.
    assert (doc["open_shards"], doc["tasks"]) == (4, 3)
    assert "shard-level" in doc["reasoning"][0]
    assert any("split it" in line for line in doc["reasoning"])


def test_stream_level_metrics_and_closed_shards(
        endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    kinesis, cw = _clients(endpoint)
    kinesis.create_stream(StreamName="plain", ShardCount=2)
    first = list_shards(kinesis, "plain")[0][0]
    kinesis.split_shard(StreamName="plain", ShardToSplit=first,
                        NewStartingHashKey=str(2**126))
    shards = list_shards(kinesis, "plain")
    n_open = sum(is_open for _, is_open in shards)
    assert n_open == 3 and len(shards) == 4
    _put(cw, {"StreamName": "plain"}, 60 * 3000, 60 * 3000 * 100)
    doc = _run(capsys, endpoint, "plain", "--records-per-task-per-s", "1000",
               "--max-shards-per-task", "1", "--headroom", "1")
    assert doc["open_shards"] == 3
    assert doc["records_per_s"] == pytest.approx(3000)
    assert doc["tasks"] == 3
    assert "stream-level" in doc["reasoning"][0]
    closed = [s for s in doc["shards"] if not s["is_open"]]
    assert closed and all(s["records_per_s"] == 0 for s in closed)


def test_text_output_through_the_cli(endpoint: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    kinesis, _ = _clients(endpoint)
    kinesis.create_stream(StreamName="quiet", ShardCount=1)
    from consumer.cli import main as cli_main

    assert cli_main(["scale", "recommend", "--stream", "quiet", "--endpoint-url", endpoint]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "recommended tasks: 1"


def test_missing_stream_fails_cleanly(endpoint: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stream", "nope", "--endpoint-url", endpoint]) == 1
    assert "scale recommend:" in capsys.readouterr().err
