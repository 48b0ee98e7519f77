"""The transform stage inside the real pipeline, into S3 (moto server), checked by content.

A settings file declares a lookup enrichment (a per-device offset from an NDJSON table,
rejecting unknown devices), a filter (no battery readings) and a derive (the value in
Fahrenheit plus the device's offset, written over the contract's value field). Demo-shaped
records (consumer/local/producer.py) with stragglers go through ShardPipeline. Then:
- the window results equal a Polars GROUP BY over the oracle's windowed records, with an
  independent simulation of the watermark deciding which records are late;
- produced = archived, and archived = windowed + filtered + quarantined(transform) + late;
- the archive holds the raw records (untransformed payloads), quarantine the raw bytes with
  the step's name and reason, and the filter's metric counts what it removed.
Also through ShardProcessor: the chain is loaded at initialize from the settings file, and
a broken chain stops the start with the step and key named.
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
import polars as pl
import psycopg2
import pytest
from amazon_kclpy import dispatch

from consumer.config import ConfigError, Settings, load_settings, with_overrides
from consumer.kcl.processor import ShardProcessor, load_transform
from consumer.local.producer import ProducerSpec, generate
from consumer.local.reconcile import ObjectCounter, s3_result_rows
from consumer.metrics import registry as m
from consumer.pipeline import contract_from
from consumer.records.model import Position, RawRecord
from consumer.sinks.migrate import migrate_all
from consumer.transform.config import load_chain
from consumer.transform.stage import open_stage
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3, tcp_postgres

pytestmark = pytest.mark.integration
BUCKET = "transform-test"
SHARD = "shardId-000000000003"
SIZE_MS, LATENESS_MS, OOO_MS = 60_000, 5_000, 3_000
DEVICES = 12
KNOWN = DEVICES - 2  # dev-00010 and dev-00011 are not in the lookup table

CHAIN = """
[[transform]]
name = "sites"
kind = "lookup"
source = "sites.ndjson"
key = "device_id"
on_miss = "reject"

[[transform]]
name = "no-battery"
kind = "filter"
expr = "metric != 'battery'"

[[transform]]
name = "fahrenheit"
kind = "derive"
field = "value"
expr = "value * 1.8 + 32.0 + offset"
"""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


def offset(device: int) -> float:
    return round(device * 0.25 - 1.0, 2)


def settings_file(tmp_path: Path, chain: str = CHAIN) -> Path:
    (tmp_path / "sites.ndjson").write_bytes(b"".join(
        orjson.dumps({"device_id": f"dev-{d:05d}", "site": f"plant-{d % 3}",
                      "offset": offset(d)}) + b"\n" for d in range(KNOWN)))
    path = tmp_path / "aetherstream.toml"
    path.write_text(f'[windows]\nsize_ms = {SIZE_MS}\n{chain}')
    return path


def settings(prefix: str, path: Path) -> Settings:
    return with_overrides(
        load_settings(path, env={}),
        s3={"bucket": BUCKET, "archive_prefix": f"{prefix}/raw/",
            "quarantine_prefix": f"{prefix}/q/", "results_prefix": f"{prefix}/results/",
            "state_prefix": f"{prefix}/state/"},
        flush={"max_records": 100_000, "max_age_ms": 10**9},
        windows={"allowed_lateness_ms": LATENESS_MS, "out_of_orderness_ms": OOO_MS,
                 "idle_timeout_ms": 0},
    )


def produced() -> list[RawRecord]:
    """Demo readings (both timestamp forms), and every 97th one again 2 minutes earlier
    in event time, later in the shard: stragglers past the allowed lateness."""
    spec = ProducerSpec(records=3_000, devices=DEVICES, jitter_ms=OOO_MS, interval_ms=40)
    out: list[RawRecord] = []
    for i, r in enumerate(generate(spec)):
        body = orjson.loads(r.data)
        ts = body["ts"]
        out.append(RawRecord(r.data, r.partition_key, Position(10**6 + len(out), 0), 0))
        if i % 97 == 96:
            old = (ts if isinstance(ts, int) else None) or spec.start_ms + i * 40
            late = orjson.dumps({**body, "ts": old - 120_000, "seq": -i})
            out.append(RawRecord(late, r.partition_key, Position(10**6 + len(out), 0), 0))
    return out


def ts_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    from consumer.records.decode import parse_timestamp

    return parse_timestamp(value)


def oracle(records: list[RawRecord]) -> dict[str, Any]:
    """What the chain and the windows should make of the records, computed directly: the
    chain's three steps in plain Python, the watermark per record (judged before its own
    time counts), then a Polars GROUP BY over what was windowed."""
    filtered, refused, late = [], [], []
    rows: list[dict[str, Any]] = []
    watermark = -math.inf
    for rec in records:
        body = orjson.loads(rec.data)
        device = int(body["device_id"].removeprefix("dev-"))
        if device >= KNOWN:
            refused.append(rec.position)
            continue
        if body["metric"] == "battery":
            filtered.append(rec.position)
            continue
        t = ts_ms(body["ts"])
        start = t - t % SIZE_MS
        if start + SIZE_MS + LATENESS_MS <= watermark:
            late.append(rec.position)
            continue
        watermark = max(watermark, t - OOO_MS)
        rows.append({"device_id": body["device_id"], "metric": body["metric"],
                     "start_ms": start, "value": body["value"] * 1.8 + 32.0 + offset(device)})
    groups = (pl.DataFrame(rows).group_by("device_id", "metric", "start_ms")
              .agg(pl.len().alias("count"), pl.col("value").sum().alias("sum"),
                   pl.col("value").min().alias("min"), pl.col("value").max().alias("max")))
    results = {(r["device_id"], r["metric"], r["start_ms"]): r
               for r in groups.iter_rows(named=True)}
    return {"filtered": filtered, "refused": refused, "late": late, "windowed": len(rows),
            "results": results}


def run(s3: S3Endpoint, prefix: str, path: Path, records: list[RawRecord],
        batch: int) -> None:
    cfg = settings(prefix, path)
    configured = load_chain(path)
    stage = open_stage(configured.chain, contract_from(cfg), None)
    pipeline = make_pipeline(cfg, SHARD, s3.client(), transform=stage)
    for start in range(0, len(records), batch):
        pipeline.ingest(records[start:start + batch], now_ms=0)
    pipeline.close(now_ms=0)
    pipeline.flush()


def filtered_metric(name: str) -> float:
    return m.REGISTRY.get_sample_value("aetherstream_records_filtered_total",
                                       {"shard": SHARD, "filter": name}) or 0.0


def test_chain_in_the_pipeline_equals_the_oracle_and_reconciles(s3: S3Endpoint,
                                                                 tmp_path: Path) -> None:
    path = settings_file(tmp_path)
    records = produced()
    want = oracle(records)
    assert want["late"] and want["filtered"] and want["refused"]  # every path is exercised
    before = filtered_metric("no-battery")
    run(s3, "t1", path, records, 250)

    archive = ObjectCounter(s3.client(), BUCKET, "t1/raw/")
    quarantine = ObjectCounter(s3.client(), BUCKET, "t1/q/")
    archive.refresh()
    quarantine.refresh()
    # produced = archived: every record once, as received (the raw payload, not the output)
    assert archive.duplicates == 0 and archive.distinct == len(records)
    by_seq = {int(r["sequence"]): r for r in archive.rows}
    assert all(orjson.dumps(by_seq[rec.position.sequence]["payload"]) == rec.data
               for rec in records)
    stages = Counter((r["stage"], r["reason"]) for r in quarantine.rows)
    assert stages == {("transform", "sites:lookup_miss"): len(want["refused"]),
                      ("window", "late"): len(want["late"])}
    refused = [r for r in quarantine.rows if r["stage"] == "transform"]
    assert sorted(Position(int(r["sequence"]), r["sub_sequence"]) for r in refused) == \
        want["refused"]
    raw = {rec.position: rec.data for rec in records}
    assert all(base64.b64decode(r["data_b64"]) == raw[Position(int(r["sequence"]),
                                                               r["sub_sequence"])]
               and "'sites'" in r["message"] for r in refused)
    late = sorted(Position(int(r["sequence"]), r["sub_sequence"])
                  for r in quarantine.rows if r["stage"] == "window")
    assert late == want["late"]
    assert filtered_metric("no-battery") - before == len(want["filtered"])

    got = [r for r in s3_result_rows(s3.client(), BUCKET, "t1/results/") if r["is_final"]]
    windowed = sum(r["count"] for r in got)
    # archived = windowed + filtered + quarantined(transform) + late
    assert archive.distinct == windowed + len(want["filtered"]) + len(refused) + len(late)
    assert windowed == want["windowed"]
    results = {(r["key"][0], r["key"][1], r["window_start_ms"]): r for r in got}
    assert results.keys() == want["results"].keys()
    for k, r in results.items():
        o = want["results"][k]
        assert (r["count"], r["min"], r["max"]) == (o["count"], o["min"], o["max"]), k
        assert math.isclose(r["sum"], o["sum"], rel_tol=1e-12), k


def test_other_batch_boundaries_give_the_same_results(s3: S3Endpoint, tmp_path: Path) -> None:
    path = settings_file(tmp_path)
    records = produced()
    run(s3, "t2a", path, records, 500)
    run(s3, "t2b", path, records, 77)

    def final(prefix: str) -> list[tuple[Any, ...]]:
        return sorted((r["result_id"], r["count"], r["min"], r["max"], round(r["sum"], 6))
                      for r in s3_result_rows(s3.client(), BUCKET, f"{prefix}/results/"))

    assert final("t2a") == final("t2b") and final("t2a")


# --------------------------------------------------------------------- the processor


def message(action: str, **fields: Any) -> Any:
    return json.loads(json.dumps({"action": action, **fields}),
                      object_hook=dispatch.message_decode)


def test_processor_loads_the_chain_at_initialize(s3: S3Endpoint, tmp_path: Path) -> None:
    """Through the KCL callbacks, with Redshift (PostgreSQL): the raw rows hold the records
    as received (their own value, not the derived one), the closed windows the output."""
    path = settings_file(tmp_path)
    with tcp_postgres() as dsn:
        cfg = with_overrides(settings("p1", path), flush={"max_age_ms": 0},
                             stream={"app_name": "transform-p1"}, kcl={"worker_id": "worker-a"},
                             redshift={"enabled": True, "dsn": dsn, "dialect": "postgres",
                                       "schema": "transform_p1"})
        migrate_all(cfg)
        _processor_run(s3, cfg, path, dsn)


def _processor_run(s3: S3Endpoint, cfg: Settings, path: Path, dsn: str) -> None:
    ddb = boto3.client("dynamodb", endpoint_url=s3.url, region_name="us-east-1",
                       aws_access_key_id="t", aws_secret_access_key="t")
    ddb.create_table(TableName="transform-p1", BillingMode="PAY_PER_REQUEST",
                     KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}])
    ddb.put_item(TableName="transform-p1", Item={
        "leaseKey": {"S": SHARD}, "leaseOwner": {"S": cfg.kcl.worker_id},
        "leaseCounter": {"N": "1"}, "checkpoint": {"S": "TRIM_HORIZON"}})
    p = ShardProcessor(cfg, s3.client(), ddb, time.time_ns(), str(path))
    ckpt = RecordingCheckpointer()
    message("initialize", shardId=SHARD, sequenceNumber="TRIM_HORIZON",
            subSequenceNumber=0).dispatch(ckpt, p)
    records = produced()
    for start in range(0, len(records), 500):
        batch = [{"action": "record", "data": base64.b64encode(r.data).decode(),
                  "partitionKey": r.partition_key, "sequenceNumber": str(r.position.sequence),
                  "subSequenceNumber": 0, "approximateArrivalTimestamp": 0}
                 for r in records[start:start + 500]]
        message("processRecords", records=batch, millisBehindLatest=0).dispatch(ckpt, p)
    message("shutdownRequested").dispatch(ckpt, p)
    assert ckpt.positions[-1] == records[-1].position
    archive = ObjectCounter(s3.client(), BUCKET, "p1/raw/")
    quarantine = ObjectCounter(s3.client(), BUCKET, "p1/q/")
    archive.refresh()
    quarantine.refresh()
    want = oracle(records)
    assert archive.distinct == len(records)
    assert sum(r["stage"] == "transform" for r in quarantine.rows) == len(want["refused"])
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sequence_number, value, event_ts_ms FROM transform_p1.raw_records")
        raw_rows = {int(seq): (value, ts) for seq, value, ts in cur.fetchall()}
    received = {r.position.sequence: orjson.loads(r.data) for r in records}
    assert raw_rows == {seq: (b["value"], ts_ms(b["ts"])) for seq, b in received.items()}
    # The windows that closed (2 minutes of event time) hold the chain's output.
    final = [r for r in s3_result_rows(s3.client(), BUCKET, "p1/results/") if r["is_final"]]
    assert final
    for r in final:
        o = want["results"][(r["key"][0], r["key"][1], r["window_start_ms"])]
        assert (r["count"], r["min"], r["max"]) == (o["count"], o["min"], o["max"])
        assert math.isclose(r["sum"], o["sum"], rel_tol=1e-12)


def test_a_broken_chain_stops_the_start_naming_step_and_key(tmp_path: Path) -> None:
    bad = CHAIN.replace("metric != 'battery'", "metric != ")
    path = settings_file(tmp_path, bad)
    with pytest.raises(ConfigError, match=r"transform\[1\] 'no-battery': expr: not a CEL"):
        load_transform(str(path), settings("x", path), lambda: None)
    no_windows = with_overrides(settings("x", settings_file(tmp_path)),
                                windows={"enabled": False})
    with pytest.raises(ConfigError, match=r"needs windows\.enabled = true"):
        load_transform(str(settings_file(tmp_path)), no_windows, lambda: None)
    assert load_transform(None, no_windows, lambda: None) is None
    plain = tmp_path / "plain.toml"
    plain.write_text("[windows]\nsize_ms = 60000\n")  # no [[transform]]: today's path
    assert load_transform(str(plain), load_settings(plain, env={}), lambda: None) is None


EXAMPLE = Path(__file__).resolve().parents[2] / "examples/transform"


def test_the_readme_settings_file_runs_in_the_pipeline(s3: S3Endpoint) -> None:
    """examples/transform/settings.toml: its records do not meet the contract as received
    (`dev`, `temp_f`); the chain makes them (rename, set, derive), so they are windowed and
    archived; the filtered one, which never met the contract, is counted, not archived."""
    path = EXAMPLE / "settings.toml"
    cfg = settings("readme", path)
    lines = (EXAMPLE / "sample.ndjson").read_bytes().splitlines()
    records = [RawRecord(line, "pk", Position(i + 1, 0), 0) for i, line in enumerate(lines)]
    stage = open_stage(load_chain(path).chain, contract_from(cfg), None)
    pipeline = make_pipeline(cfg, SHARD, s3.client(), transform=stage)
    before = filtered_metric("plausible")
    pipeline.ingest(records, now_ms=0)
    pipeline.close(now_ms=0)
    pipeline.flush()
    got = sorted((tuple(r["key"]), r["count"], r["sum"])
                 for r in s3_result_rows(s3.client(), BUCKET, "readme/results/"))
    assert got == [(("dev-1", "temp_c"), 1, 37.0), (("dev-2", "temp_c"), 1, 5.0),
                   (("dev-9", "temp_c"), 1, 25.0)]
    archive = ObjectCounter(s3.client(), BUCKET, "readme/raw/")
    quarantine = ObjectCounter(s3.client(), BUCKET, "readme/q/")
    archive.refresh()
    quarantine.refresh()
    assert sorted(int(r["sequence"]) for r in archive.rows) == [1, 2, 4]
    assert [orjson.loads(lines[int(r["sequence"]) - 1]) == r["payload"]
            for r in archive.rows] == [True] * 3
    assert sorted((int(r["sequence"]), r["stage"], r["reason"]) for r in quarantine.rows) == [
        (5, "transform", "temp-number:convert_error"),
        (6, "transform", "to-celsius:missing_field"), (7, "decode", "not_an_object")]
    assert filtered_metric("plausible") - before == 1
