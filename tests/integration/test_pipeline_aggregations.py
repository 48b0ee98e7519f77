"""Two declared aggregations beside the default one, through the real pipeline into S3
(moto server): per device over 60 s tumbling windows, per metric over 5-minute sliding
windows with quantiles and a filter. Each has its own results prefix and manifest.
- The default aggregation's results are exactly those of a run without declared ones.
- Each declared aggregation's S3 results equal a pure single-aggregation run over the same
  records (consumer/windows/aggregations.py, itself checked against a Polars oracle).
- After a crash (checkpoint with the set's snapshot, more flushed, then death) the new owner
  restores the snapshot from the store and replays with other batch boundaries: every
  prefix holds each result once, equal to the clean run's.
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from consumer.commit.state import SnapshotStore
from consumer.config import Settings, load_settings, with_overrides
from consumer.local.reconcile import s3_result_rows
from consumer.pipeline import ShardPipeline
from consumer.records.model import Event, Position, RawRecord
from consumer.windows.aggconfig import parse_aggregations
from consumer.windows.aggregations import AggregationSet, is_set_snapshot
from consumer.windows.engine import WindowEngine
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

BUCKET = "aggregations-test"
SHARD = "shardId-000000000003"
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 300_000
TABLES: list[dict[str, Any]] = [
    {"name": "per_device", "group_by": ["device_id"],
     "window": {"kind": "tumbling", "size_ms": 60_000, "out_of_orderness_ms": 2_000}},
    {"name": "per_metric", "group_by": ["metric"], "quantiles": True, "filter": "value > 2",
     "window": {"kind": "sliding", "size_ms": 300_000, "slide_ms": 60_000,
                "allowed_lateness_ms": 30_000, "out_of_orderness_ms": 1_000}},
]


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


def settings(prefix: str) -> Settings:
    return with_overrides(
        load_settings(None, env={}),
        s3={"bucket": BUCKET, "archive_prefix": f"{prefix}/raw/",
            "quarantine_prefix": f"{prefix}/q/", "results_prefix": f"{prefix}/results/",
            "state_prefix": f"{prefix}/state/"},
        flush={"max_records": 100_000, "max_age_ms": 10**9},
        windows={"size_ms": 60_000, "out_of_orderness_ms": 2_000, "idle_timeout_ms": 0},
    )


def declared(cfg: Settings) -> AggregationSet:
    return AggregationSet(parse_aggregations(TABLES, "test", cfg), SHARD)


def records(n: int) -> list[RawRecord]:
    out = []
    for i in range(n):
        # 10 minutes, bounded disorder, and every 37th record two minutes behind (late).
        ts = T0 + i * 1_500 - (i * 7919) % 1_500 - (120_000 if i % 37 == 36 else 0)
        body = {"device_id": f"d{i % 3}", "metric": "th"[i % 2], "value": i % 17, "ts": ts}
        out.append(RawRecord(orjson.dumps(body), f"d{i % 3}", Position(5000 + i, 0), ts))
    return out


def rows(s3: S3Endpoint, prefix: str, agg: str = "") -> list[dict[str, Any]]:
    base = f"{prefix}/results/"
    got = s3_result_rows(s3.client(), BUCKET, f"{base}agg={agg}/" if agg else base)
    if not agg:  # the default's are the objects outside agg=<name>/
        nested = [r["result_id"] for a in TABLES for r in rows(s3, prefix, a["name"])]
        got = [r for r in got if r["result_id"] not in set(nested)]
    return sorted(got, key=lambda r: r["result_id"])


def feed(p: ShardPipeline, recs: list[RawRecord], batch: int) -> None:
    for start in range(0, len(recs), batch):
        p.ingest(recs[start:start + batch], now_ms=0)


def finish(p: ShardPipeline) -> None:
    p.close(now_ms=0)
    p.flush()


def pure(cfg: Settings, recs: list[RawRecord], name: str) -> dict[str, tuple[int, float]]:
    """One aggregation alone, the pure set over the records' fields."""
    (agg,) = [a for a in parse_aggregations(TABLES, "test", cfg) if a.name == name]
    s = AggregationSet([agg], SHARD)
    batch = [(orjson.loads(r.data), Event(("-",), orjson.loads(r.data)["ts"], 0.0, r))
             for r in recs]
    outs = [s.process(batch, 0).outputs[name], s.close_all()[name]]
    return {r.result_id: (r.aggregates.count, r.aggregates.sum)
            for o in outs for r in o.results if r.is_final}


def test_each_aggregation_has_its_own_results_and_the_default_is_unchanged(
        s3: S3Endpoint) -> None:
    recs = records(400)
    finish_plain = make_pipeline(settings("plain"), SHARD, s3.client())
    feed(finish_plain, recs, 50)
    finish(finish_plain)
    cfg = settings("two")
    both = make_pipeline(cfg, SHARD, s3.client(), aggregations=declared(cfg))
    feed(both, recs, 50)
    finish(both)

    assert rows(s3, "two") == rows(s3, "plain") != []
    for a in TABLES:
        got = rows(s3, "two", a["name"])
        assert {r["result_id"]: (r["count"], r["sum"]) for r in got} == pure(cfg, recs,
                                                                            a["name"])
        assert all(r["is_final"] for r in got)
    per_metric = rows(s3, "two", "per_metric")
    assert {tuple(r["key"]) for r in per_metric} == {("t",), ("h",)}
    assert all(r["window_end_ms"] - r["window_start_ms"] == 300_000 and "p50" in r["quantiles"]
               for r in per_metric)
    assert sum(r["count"] for r in rows(s3, "two", "per_device")) < 400  # late ones dropped


def test_after_a_crash_every_aggregation_equals_one_clean_run(s3: S3Endpoint) -> None:
    recs = records(400)
    clean_cfg = settings("clean")
    clean = make_pipeline(clean_cfg, SHARD, s3.client(), aggregations=declared(clean_cfg))
    feed(clean, recs, 50)
    finish(clean)

    cfg = settings("crash")
    snapshots = SnapshotStore(s3.client(), BUCKET, "crash/state/", cfg.stream.app_name, SHARD)
    first = make_pipeline(cfg, SHARD, s3.client(), snapshots=snapshots,
                          aggregations=declared(cfg))
    feed(first, recs[:200], 50)
    ckpt = RecordingCheckpointer()
    assert first.commit(ckpt)
    feed(first, recs[200:260], 15)
    first.flush()  # after the checkpoint; then the worker dies before its next one

    found = snapshots.load(recs[199].position)
    assert found is not None and is_set_snapshot(found[0])
    aggs, default = AggregationSet.restore(declared(cfg).aggregations, SHARD, found[0], 0)
    assert default is not None
    second = make_pipeline(cfg, SHARD, s3.client(), start=recs[199].position,
                           engine=WindowEngine.restore(default, 0), snapshots=snapshots,
                           aggregations=aggs)
    feed(second, recs[200:], 33)
    finish(second)

    for agg in ("", *(a["name"] for a in TABLES)):
        got = rows(s3, "crash", agg)
        assert got and Counter(r["result_id"] for r in got).most_common(1)[0][1] == 1
        assert got == rows(s3, "clean", agg)
