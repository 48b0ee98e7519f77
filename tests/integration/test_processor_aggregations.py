"""The README's settings file with two aggregations (examples/aggregations/settings.toml),
through the KCL callbacks of the real ShardProcessor, against moto (S3 and DynamoDB).

Worker A processes half the stream (each batch committed: results, then the set snapshot,
then the checkpoint) and dies; worker B takes the lease, restores every aggregation from the
snapshot at the checkpoint and goes on. Every aggregation's S3 results are exactly the final
results of one pure run over the chain's output: per device (60 s tumbling), per metric and
derived band (5-minute sliding, quantiles, a filter), and the default aggregation as ever.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from amazon_kclpy import dispatch

from consumer.config import Settings, load_settings, with_overrides
from consumer.kcl.processor import ShardProcessor
from consumer.local.producer import ProducerSpec, generate
from consumer.local.reconcile import s3_result_rows
from consumer.pipeline import contract_from, window_spec
from consumer.records.decode import decode_batch
from consumer.records.model import Position, RawRecord
from consumer.windows.aggconfig import load_aggregations
from consumer.windows.aggregations import AggregationSet
from consumer.windows.engine import WindowEngine
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.servers import S3Endpoint, moto_s3

NAME = "aggs-proc"
SHARD = "shardId-000000000000"
FILE = Path(__file__).resolve().parents[2] / "examples/aggregations/settings.toml"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=NAME)
        yield endpoint


def settings(worker: str) -> Settings:
    return with_overrides(load_settings(FILE, env={}), stream={"name": NAME, "app_name": NAME},
                          s3={"bucket": NAME}, kcl={"worker_id": worker},
                          flush={"max_age_ms": 0}, windows={"idle_timeout_ms": 0})


def produced() -> list[RawRecord]:
    """Demo readings, and every 89th one again 3 minutes earlier (late for some windows)."""
    spec = ProducerSpec(records=3_000, devices=4, interval_ms=200)
    out: list[RawRecord] = []
    for i, r in enumerate(generate(spec)):
        out.append(RawRecord(r.data, r.partition_key, Position(10**6 + len(out), 0), 0))
        if i % 89 == 88:
            late = orjson.dumps({**orjson.loads(r.data), "ts": spec.start_ms + i * 200 - 180_000})
            out.append(RawRecord(late, r.partition_key, Position(10**6 + len(out), 0), 0))
    return out


def message(action: str, **fields: Any) -> Any:
    return json.loads(json.dumps({"action": action, **fields}),
                      object_hook=dispatch.message_decode)


def lease(ddb: Any, worker: str, counter: int) -> None:
    ddb.put_item(TableName=NAME, Item={
        "leaseKey": {"S": SHARD}, "leaseOwner": {"S": worker},
        "leaseCounter": {"N": str(counter)}, "checkpoint": {"S": "TRIM_HORIZON"}})


def run(p: ShardProcessor, ckpt: RecordingCheckpointer, records: list[RawRecord],
        start: Position | None) -> None:
    message("initialize", shardId=SHARD,
            sequenceNumber=str(start.sequence) if start else "TRIM_HORIZON",
            subSequenceNumber=0).dispatch(ckpt, p)
    for i in range(0, len(records), 300):
        batch = [{"action": "record", "data": base64.b64encode(r.data).decode(),
                  "partitionKey": r.partition_key, "sequenceNumber": str(r.position.sequence),
                  "subSequenceNumber": 0, "approximateArrivalTimestamp": 0}
                 for r in records[i:i + 300]]
        message("processRecords", records=batch, millisBehindLatest=0).dispatch(ckpt, p)


def pure(cfg: Settings, records: list[RawRecord]) -> dict[str, dict[str, tuple[int, float]]]:
    """Final results of one uninterrupted pure run: the default engine over the decoded
    records, the declared aggregations over the chain's output (band derived here)."""
    events, _ = decode_batch(records, contract_from(cfg))
    engine = WindowEngine(window_spec(cfg), SHARD)
    out = {"": engine.process(events, 0).results}
    pairs = [({**(f := orjson.loads(e.record.data)),
               "band": "high" if f["value"] >= 50.0 else "normal"}, e) for e in events]
    for name, step in AggregationSet(load_aggregations(FILE, cfg), SHARD).process(
            pairs, 0).outputs.items():
        out[name] = step.results
    return {n: {r.result_id: (r.aggregates.count, r.aggregates.sum) for r in rs if r.is_final}
            for n, rs in out.items()}


def test_two_aggregations_survive_a_failover_through_the_processor(s3: S3Endpoint) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=s3.url, region_name="us-east-1",
                       aws_access_key_id="t", aws_secret_access_key="t")
    ddb.create_table(TableName=NAME, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}])
    records = produced()
    half = len(records) // 2
    lease(ddb, "worker-a", 1)
    a, ckpt = ShardProcessor(settings("worker-a"), s3.client(), ddb, time.time_ns(),
                             str(FILE)), RecordingCheckpointer()
    run(a, ckpt, records[:half], None)
    checkpoint = ckpt.last
    assert checkpoint == records[half - 1].position  # then A dies, without a shutdown
    lease(ddb, "worker-b", 2)
    b = ShardProcessor(settings("worker-b"), s3.client(), ddb, time.time_ns(), str(FILE))
    run(b, ckpt, records[half:], checkpoint)
    message("shutdownRequested").dispatch(ckpt, b)
    assert ckpt.last == records[-1].position

    want = pure(settings("worker-a"), records)
    declared = {rid for name, results in want.items() if name for rid in results}
    for agg, expected in want.items():
        got = s3_result_rows(s3.client(), NAME, f"results/agg={agg}/" if agg else "results/")
        if not agg:  # the default's: the objects outside agg=<name>/
            got = [r for r in got if r["result_id"] not in declared]
        assert got and Counter(r["result_id"] for r in got).most_common(1)[0][1] == 1, agg
        assert {r["result_id"] for r in got} == set(expected), agg
        for r in got:
            count, total = expected[r["result_id"]]
            assert r["count"] == count and math.isclose(r["sum"], total, rel_tol=1e-9), agg
    metric_keys = {tuple(r["key"]) for r in s3_result_rows(s3.client(), NAME,
                                                          "results/agg=per_metric/")}
    assert {k[1] for k in metric_keys} == {"high", "normal"}
