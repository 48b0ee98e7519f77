"""A contract other than the demo's, end to end: the tables, mappings and rows every sink
holds are derived from its key fields ("site", "sensor.id", "channel").

Real servers: PostgreSQL (the Redshift stand-in), osmem-server (OpenSearch; its templates are
dynamic=strict, so a document with a field the mapping lacks would be refused) and moto's S3.
The records go through the real pipeline and routes; the expected content is computed here
from the records themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg2
import pytest
from opensearchpy import OpenSearch

from consumer.config import Settings, load_settings, with_overrides
from consumer.local.reconcile import s3_result_rows
from consumer.records.model import Event, Position, RawRecord
from consumer.sinks.migrate import migrate_all
from consumer.sinks.opensearch import daily_index, raw_sink
from consumer.sinks.rows import raw_row
from consumer.sinks.schema import output_schema
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3, osmem, postgres

pytestmark = pytest.mark.integration
BUCKET = "contract-schema"
KEY_FIELDS = ("site", "sensor.id", "channel")
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000
SHARD = "shardId-000000000007"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[S3Endpoint, str, str]]:
    with moto_s3() as s3, osmem() as url, postgres() as dsn:
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3, url, dsn


def settings_for(url: str, dsn: str) -> Settings:
    return with_overrides(
        load_settings(None, env={}), s3={"bucket": BUCKET},
        contract={"key_fields": KEY_FIELDS, "value_field": "reading", "ts_field": "at"},
        windows={"size_ms": 60_000, "idle_timeout_ms": 0},
        redshift={"enabled": True, "dsn": dsn, "dialect": "postgres", "schema": "plant"},
        opensearch={"enabled": True, "endpoint": url, "index_prefix": "plant", "auth": "none"},
    )


def readings() -> list[dict[str, Any]]:
    return [{"site": f"s{i % 3}", "sensor": {"id": f"t{i % 2}"}, "channel": f"c{i % 5 % 2}",
             "reading": i / 4, "at": T0 + i * 1_000} for i in range(150)]


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        out: list[tuple[Any, ...]] = cur.fetchall()
    conn.close()
    return out


def test_every_sink_holds_the_contract_key_fields(
    servers: tuple[S3Endpoint, str, str],
) -> None:
    s3, url, dsn = servers
    settings = settings_for(url, dsn)
    migrate_all(settings)
    migrate_all(settings)  # idempotent
    sent = readings()
    recs = [RawRecord(orjson.dumps(r), "pk", Position(10**50 + i, 0), T0)
            for i, r in enumerate(sent)]
    p = make_pipeline(settings, SHARD, s3.client())
    p.ingest(recs, now_ms=0)
    p.close(now_ms=0)
    report = p.flush()
    assert report["s3-archive"] == report["redshift-raw"] == 150

    # The raw table: the contract's key fields as columns, named from their paths.
    columns = query(dsn, "SELECT column_name FROM information_schema.columns WHERE"
                         " table_schema = 'plant' AND table_name = 'raw_records'"
                         " ORDER BY ordinal_position")
    assert [c for (c,) in columns] == [
        "stream", "shard", "sequence_number", "sub_sequence_number", "partition_key",
        "arrival_ms", "event_ts_ms", "site", "sensor_id", "channel", "value", "payload",
        "payload_truncated"]
    held = query(dsn, "SELECT sequence_number, site, sensor_id, channel, value, event_ts_ms"
                      " FROM plant.raw_records ORDER BY sequence_number")
    assert held == [(str(10**50 + i), r["site"], r["sensor"]["id"], r["channel"],
                     r["reading"], r["at"]) for i, r in enumerate(sent)]

    # Window results, in every sink, by content: one per key and minute.
    want: dict[tuple[tuple[str, ...], int], list[float]] = defaultdict(list)
    for r in sent:
        key = (r["site"], r["sensor"]["id"], r["channel"])
        want[(key, r["at"] - r["at"] % 60_000)].append(r["reading"])
    expected = sorted((key, start, len(v), sum(v)) for (key, start), v in want.items())
    rs_rows = query(dsn, "SELECT window_key, window_start_ms, value_count, value_sum"
                         " FROM plant.window_results")
    assert sorted((tuple(orjson.loads(k)), s, n, t) for k, s, n, t in rs_rows) == expected
    merged = query(dsn, "SELECT window_key, window_start_ms, value_count, value_sum"
                        " FROM plant.window_results_merged")
    assert sorted((tuple(orjson.loads(k)), s, n, t) for k, s, n, t in merged) == expected
    lines = s3_result_rows(s3.client(), BUCKET, "results/")
    assert sorted((tuple(r["key"]), r["window_start_ms"], r["count"], r["sum"])
                  for r in lines) == expected
    client = OpenSearch(hosts=[url], timeout=30)
    client.indices.refresh(index="plant-results")
    docs = client.search(index="plant-results", size=1000)["hits"]["hits"]
    assert sorted((tuple(d["_source"]["key"]), d["_source"]["window_start"],
                   d["_source"]["count"], d["_source"]["sum"]) for d in docs) == expected

    # OpenSearch's raw mapping names the key fields too, and takes raw documents (strict).
    template = client.indices.get_index_template(name="plant-raw")["index_templates"][0]
    props = template["index_template"]["template"]["mappings"]["properties"]
    assert {k: props[k]["type"] for k in ("site", "sensor_id", "channel")} == {
        "site": "keyword", "sensor_id": "keyword", "channel": "keyword"}
    assert "device_id" not in props and "metric" not in props
    schema = output_schema(KEY_FIELDS)
    sink = raw_sink(client, "plant", schema=schema)
    rows = [raw_row("events", SHARD, Event((r["site"], r["sensor"]["id"], r["channel"]),
                                           r["at"], r["reading"], rec))
            for r, rec in zip(sent[:10], recs[:10], strict=True)]
    outcome = sink.write_batch(rows)
    assert (outcome.written, outcome.rejected) == (10, ())
    doc = client.get(index=daily_index("plant", "raw", T0), id=rows[3].doc_id)["_source"]
    assert (doc["site"], doc["sensor_id"], doc["channel"]) == ("s0", "t1", "c1")

