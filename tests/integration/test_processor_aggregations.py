"""The README's settings file with two aggregations (examples/aggregations/settings.toml),
through the KCL callbacks of the real ShardProcessor, against moto (S3 and DynamoDB),
PostgreSQL (the Redshift sink's postgres dialect) and an in-memory OpenSearch.

Worker A processes half the stream (each batch committed: results, then the set snapshot,
then the checkpoint) and dies; worker B takes the lease, restores every aggregation from the
snapshot at the checkpoint and goes on. Every aggregation's results, in each sink (its S3
prefix, its Redshift table and merged view, its OpenSearch indices), are exactly the final
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
import psycopg2
import pytest
from amazon_kclpy import dispatch
from opensearchpy import OpenSearch

from consumer.config import Settings, load_settings, with_overrides
from consumer.kcl.processor import ShardProcessor
from consumer.local.producer import ProducerSpec, generate
from consumer.local.reconcile import s3_result_rows
from consumer.pipeline import contract_from, window_spec
from consumer.records.decode import decode_batch
from consumer.records.model import Position, RawRecord
from consumer.sinks.migrate import migrate_all
from consumer.windows.aggconfig import load_aggregations
from consumer.windows.aggregations import AggregationSet
from consumer.windows.engine import WindowEngine
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.servers import S3Endpoint, moto_s3, osmem, tcp_postgres

NAME = "aggs-proc"
SHARD = "shardId-000000000000"
FILE = Path(__file__).resolve().parents[2] / "examples/aggregations/settings.toml"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[S3Endpoint, str, str]]:
    with moto_s3() as endpoint, tcp_postgres() as dsn, osmem() as os_url:
        endpoint.client().create_bucket(Bucket=NAME)
        yield endpoint, dsn, os_url


def settings(worker: str, dsn: str = "", os_url: str = "", name: str = NAME) -> Settings:
    """The file's settings; Redshift and OpenSearch only given their servers."""
    return with_overrides(load_settings(FILE, env={}), stream={"name": name, "app_name": name},
                          s3={"bucket": NAME, "results_prefix": f"{name}/results/",
                              "archive_prefix": f"{name}/raw/",
                              "quarantine_prefix": f"{name}/quarantine/",
                              "state_prefix": f"{name}/state/"},
                          kcl={"worker_id": worker},
                          flush={"max_age_ms": 0}, windows={"idle_timeout_ms": 0},
                          redshift={"enabled": bool(dsn), "dsn": dsn, "dialect": "postgres",
                                    "schema": "aggs"},
                          opensearch={"enabled": bool(os_url), "endpoint": os_url,
                                      "auth": "none", "index_prefix": NAME})


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


def lease(ddb: Any, worker: str, counter: int, table: str = NAME) -> None:
    ddb.put_item(TableName=table, Item={
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


def table(dsn: str, relation: str) -> dict[str, tuple[int, float]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT result_id, value_count, value_sum FROM aggs.{relation}"
                    " WHERE is_final")
        return {rid: (n, total) for rid, n, total in cur.fetchall()}


def merged(dsn: str, view: str) -> int:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT coalesce(sum(value_count), 0) FROM aggs.{view} WHERE is_final")
        (n,) = cur.fetchone()
        return int(n)


def documents(os_url: str, index: str) -> dict[str, tuple[int, float]]:
    client = OpenSearch(hosts=[os_url])
    client.indices.refresh(index=index)
    hits = client.search(index=index, size=10_000)["hits"]["hits"]
    return {h["_id"]: (h["_source"]["count"], h["_source"]["sum"]) for h in hits
            if h["_source"]["is_final"]}


def same(got: dict[str, tuple[int, float]], want: dict[str, tuple[int, float]]) -> bool:
    return got.keys() == want.keys() and all(
        got[k][0] == want[k][0] and math.isclose(got[k][1], want[k][1], rel_tol=1e-9)
        for k in want)


def lease_table(s3: S3Endpoint, name: str) -> Any:
    ddb = boto3.client("dynamodb", endpoint_url=s3.url, region_name="us-east-1",
                       aws_access_key_id="t", aws_secret_access_key="t")
    ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}])
    return ddb


def test_two_aggregations_survive_a_failover_through_the_processor(
        servers: tuple[S3Endpoint, str, str]) -> None:
    s3, dsn, os_url = servers
    migrate_all(settings("worker-a", dsn, os_url), ["per_device", "per_metric"])
    ddb = lease_table(s3, NAME)
    records = produced()
    half = len(records) // 2
    lease(ddb, "worker-a", 1)
    a, ckpt = ShardProcessor(settings("worker-a", dsn, os_url), s3.client(), ddb, time.time_ns(),
                             str(FILE)), RecordingCheckpointer()
    run(a, ckpt, records[:half], None)
    checkpoint = ckpt.last
    assert checkpoint == records[half - 1].position  # then A dies, without a shutdown
    lease(ddb, "worker-b", 2)
    b = ShardProcessor(settings("worker-b", dsn, os_url), s3.client(), ddb, time.time_ns(),
                       str(FILE))
    run(b, ckpt, records[half:], checkpoint)
    message("shutdownRequested").dispatch(ckpt, b)
    assert ckpt.last == records[-1].position

    want = pure(settings("worker-a"), records)
    declared = {rid for name, results in want.items() if name for rid in results}
    for agg, expected in want.items():
        got = s3_result_rows(s3.client(), NAME, f"{NAME}/results/agg={agg}/" if agg
                             else f"{NAME}/results/")
        if not agg:  # the default's: the objects outside agg=<name>/
            got = [r for r in got if r["result_id"] not in declared]
        assert got and Counter(r["result_id"] for r in got).most_common(1)[0][1] == 1, agg
        assert {r["result_id"] for r in got} == set(expected), agg
        assert same({r["result_id"]: (r["count"], r["sum"]) for r in got}, expected), agg
        assert same(table(dsn, f"window_results_{agg}" if agg else "window_results"),
                    expected), agg
        assert merged(dsn, f"window_results_{agg}_merged" if agg else "window_results_merged"
                      ) == sum(n for n, _ in expected.values()), agg
        assert same(documents(os_url, f"{NAME}-results_{agg}" if agg else f"{NAME}-results"),
                    expected), agg
    metric_keys = {tuple(r["key"]) for r in s3_result_rows(s3.client(), NAME,
                                                          f"{NAME}/results/agg=per_metric/")}
    assert {k[1] for k in metric_keys} == {"high", "normal"}


def test_declaring_and_dropping_aggregations_between_owners(
        servers: tuple[S3Endpoint, str, str], tmp_path: Path) -> None:
    """An existing deployment adds aggregations, then drops them: owner A has none (its
    snapshot is the default engine's own), B declares two (it restores the default engine
    from A's snapshot and starts them empty at the checkpoint), C has none again (it takes
    the default engine out of B's set snapshot). The default aggregation's results are those
    of one uninterrupted run; each declared one's are those of a run over B's records."""
    s3, _, _ = servers
    name = "aggs-upgrade"
    plain = tmp_path / "plain.toml"
    plain.write_text(FILE.read_text().split("[[aggregation]]")[0])
    ddb = lease_table(s3, name)
    records = produced()
    thirds = [records[:1000], records[1000:2000], records[2000:]]
    ckpt, start = RecordingCheckpointer(), None
    for n, (worker, path) in enumerate([("a", plain), ("b", FILE), ("c", plain)]):
        lease(ddb, worker, n + 1, name)
        p = ShardProcessor(settings(worker, name=name), s3.client(), ddb, time.time_ns(),
                           str(path))
        run(p, ckpt, thirds[n], start)
        start = ckpt.last
        assert start == thirds[n][-1].position
    want_default = pure(settings("a"), records)[""]
    want_declared = pure(settings("a"), thirds[1])
    for agg in ("", "per_device", "per_metric"):
        got = s3_result_rows(s3.client(), NAME, f"{name}/results/agg={agg}/" if agg
                             else f"{name}/results/")
        expected = want_declared[agg] if agg else want_default
        if not agg:
            got = [r for r in got if r["result_id"] not in {
                rid for a in ("per_device", "per_metric") for rid in want_declared[a]}]
        assert expected and same({r["result_id"]: (r["count"], r["sum"]) for r in got},
                                 expected), agg
