"""Mixed schema versions in one stream reach the same aggregation; a type change is
quarantined and counted as drift.

1. The real window engine (WindowEngine.process_records, the processor's path) fed v1
   (`temp`, ISO time) and v2 (`value`, epoch ms) records under a versioned contract gives
   the same window results, by content, as a single-version run over the same readings.
2. The real pipeline (ShardPipeline, routes into S3 on moto) with the versions set in the
   settings: its S3 results equal a single-version run's, the mistyped record is in
   quarantine with reason type_change, and aetherstream_schema_drift_total counted it.
Stand-in: moto for S3.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from consumer.config import Settings, load_settings, with_overrides
from consumer.local.reconcile import s3_result_rows
from consumer.metrics.registry import REGISTRY
from consumer.pipeline import ShardPipeline, contract_from
from consumer.records.contract import Contract
from consumer.records.model import Position, RawRecord
from consumer.sinks.layout import decode_body
from consumer.windows.engine import WindowEngine
from consumer.windows.model import WindowResult, WindowSpec
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

SHARD = "shardId-000000000003"
BUCKET = "schema-versions-test"
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000
VERSIONS = json.dumps([
    {"name": "v1", "when": 1, "value_field": "temp", "ts_format": "iso",
     "fields": {"device_id": "string", "metric": "string", "ts": "string", "temp": "number",
                "unit": "string"}},
    {"name": "v2", "when": 2, "ts_field": "time", "ts_format": "epoch_ms",
     "fields": {"device_id": "string", "metric": "string", "time": "integer",
                "value": "number"}},
])
ENV = {"AETHERSTREAM_CONTRACT_VERSION_FIELD": "schema_version",
       "AETHERSTREAM_CONTRACT_VERSIONS": VERSIONS}


def reading(i: int) -> tuple[str, int, float]:
    """(device, event time, value) of the i-th record: 5 minutes, bounded disorder."""
    return f"d{i % 4}", T0 + i * 600 - (i * 7919) % 1200, float(i % 23) / 4


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{ms % 1000:03d}Z"


def mixed(i: int) -> dict[str, Any]:
    dev, ts, value = reading(i)
    if i % 3 == 0:
        return {"schema_version": 1, "device_id": dev, "metric": "t", "ts": iso(ts),
                "temp": value, "unit": "C"}
    return {"schema_version": 2, "device_id": dev, "metric": "t", "time": ts, "value": value}


def today(i: int) -> dict[str, Any]:
    dev, ts, value = reading(i)
    return {"device_id": dev, "metric": "t", "ts": ts, "value": value}


def raw(objs: list[dict[str, Any]]) -> list[RawRecord]:
    return [RawRecord(orjson.dumps(o), o["device_id"], Position(9000 + i, 0), T0)
            for i, o in enumerate(objs)]


def run_engine(records: list[RawRecord], contract: Contract, batch: int) -> list[WindowResult]:
    engine = WindowEngine(WindowSpec(size_ms=60_000, out_of_orderness_ms=2_000), SHARD)
    results: list[WindowResult] = []
    for start in range(0, len(records), batch):
        events, rejected, out = engine.process_records(records[start:start + batch], contract, 0)
        assert rejected == [] and len(events) == len(records[start:start + batch])
        results += out.results
    return results + engine.close_all().results


def test_mixed_versions_give_the_window_results_of_one_version() -> None:
    versioned = contract_from(load_settings(None, env=ENV))
    assert [v.name for v in versioned.versions] == ["v1", "v2"]
    n = 600
    got = run_engine(raw([mixed(i) for i in range(n)]), versioned, 64)
    want = run_engine(raw([today(i) for i in range(n)]), Contract(), 50)
    assert got == want
    assert sum(r.aggregates.count for r in got if r.is_final) == n


# --- through the pipeline, into S3 ------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


def settings(prefix: str, env: dict[str, str]) -> Settings:
    return with_overrides(
        load_settings(None, env=env),
        s3={"bucket": BUCKET, "archive_prefix": f"{prefix}/raw/",
            "quarantine_prefix": f"{prefix}/q/", "results_prefix": f"{prefix}/results/",
            "state_prefix": f"{prefix}/state/"},
        flush={"max_records": 100_000, "max_age_ms": 10**9},
        windows={"size_ms": 60_000, "out_of_orderness_ms": 2_000, "idle_timeout_ms": 0},
    )


def feed(p: ShardPipeline, records: list[RawRecord], batch: int) -> None:
    for start in range(0, len(records), batch):
        p.ingest(records[start:start + batch], now_ms=0)
    p.close(now_ms=0)
    p.flush()


def rows(s3: S3Endpoint, prefix: str) -> list[dict[str, Any]]:
    found = []
    client = s3.client()
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []):
        found += decode_body(obj["Key"], client.get_object(Bucket=BUCKET, Key=obj["Key"])
                             ["Body"].read())
    return found


def drift(field: str, kind: str) -> float:
    got = REGISTRY.get_sample_value("aetherstream_schema_drift_total",
                                    {"field": field, "kind": kind})
    return got or 0.0


def test_the_pipeline_aggregates_both_versions_and_quarantines_a_type_change(
    s3: S3Endpoint,
) -> None:
    n = 300
    objs = [mixed(i) for i in range(n)]
    changed = dict(objs[100], value=str(objs[100]["value"]))  # a v2 producer sends strings
    objs[100] = changed
    extra = dict(objs[50], firmware="2.1")  # a field v1 does not declare: counted, kept
    objs[50] = extra
    before = drift("value", "type_change"), drift("firmware", "unknown_field")
    feed(make_pipeline(settings("mixed", ENV), SHARD, s3.client()), raw(objs), 40)

    single = [today(i) for i in range(n) if i != 100]
    clean = raw(single)  # the same readings, minus the quarantined one
    feed(make_pipeline(settings("single", {}), SHARD, s3.client()), clean, 40)

    def by_id(prefix: str) -> list[dict[str, Any]]:
        return sorted(s3_result_rows(s3.client(), BUCKET, f"{prefix}/results/"),
                      key=lambda r: r["result_id"])

    got, want = by_id("mixed"), by_id("single")
    assert got == want and sum(r["count"] for r in got) == n - 1
    quarantined = rows(s3, "mixed/q/")
    assert [(q["stage"], q["reason"]) for q in quarantined] == [("contract", "type_change")]
    assert quarantined[0]["message"] == ("field 'value' changed type (schema version 'v2'): "
                                         "expected number, got string")
    assert len(rows(s3, "mixed/raw/")) == n - 1
    after = drift("value", "type_change"), drift("firmware", "unknown_field")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)
