"""`transform test --against-archive` against results the real pipeline stored (moto S3).

The records of tests/support/transform_case.py go through ShardPipeline with the same
settings file; the input of `transform test` is then the archive objects that pipeline wrote
(raw archive lines: the shard and positions are known), or the records as a plain file.
Equal -> exit 0; a record added to the input, or a stored results object altered -> the
window and key that differ are reported, exit 1.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from consumer.cli import main
from consumer.config import load_settings, with_overrides
from consumer.pipeline import contract_from
from consumer.records.model import Position, RawRecord
from consumer.sinks.layout import decode_body, gzip_body
from consumer.transform.config import load_chain
from consumer.transform.stage import open_stage
from consumer.windows.aggconfig import load_aggregations
from consumer.windows.aggregations import AggregationSet
from tests.support import transform_case as case
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

pytestmark = pytest.mark.integration
BUCKET = "ttest-archive"
SHARD = "shardId-000000000007"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.fixture()
def aws_env(s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's boto3 client finds moto the way `aetherstream local env` points it."""
    for name, value in {"AWS_ENDPOINT_URL_S3": s3.url, "AWS_ACCESS_KEY_ID": "test",
                        "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def records() -> list[RawRecord]:
    # Even sequence numbers: a record can be slipped in between two (sub-sequence 1).
    return [RawRecord(p, f"pk{i % 3}", Position(10**6 + 2 * i, 0), 1_000 + i)
            for i, p in enumerate(case.payloads())]


def store(s3: S3Endpoint, prefix: str, path: Path) -> None:
    """The real pipeline over the records, its windows closed at the end (shard end)."""
    cfg = with_overrides(
        load_settings(path, env={}),
        s3={"bucket": BUCKET, "archive_prefix": f"{prefix}/raw/",
            "quarantine_prefix": f"{prefix}/q/", "results_prefix": f"{prefix}/results/",
            "state_prefix": f"{prefix}/state/"},
        flush={"max_records": 100_000, "max_age_ms": 10**9})
    stage = open_stage(load_chain(path).chain, contract_from(cfg), None)
    declared = load_aggregations(path, cfg)
    pipeline = make_pipeline(cfg, SHARD, s3.client(), transform=stage,
                             aggregations=AggregationSet(declared, SHARD) if declared else None)
    batch = records()
    for start in range(0, len(batch), 40):
        pipeline.ingest(batch[start:start + 40], now_ms=0)
    pipeline.close(now_ms=0)
    pipeline.flush()


def objects(s3: S3Endpoint, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"] for o in listed)


def archive_lines(s3: S3Endpoint, prefix: str) -> list[bytes]:
    client = s3.client()
    return [line for key in objects(s3, f"{prefix}/raw/")
            for line in gzip.decompress(client.get_object(Bucket=BUCKET, Key=key)["Body"]
                                        .read()).splitlines()]


def run(capsys: pytest.CaptureFixture[str], path: Path, data: Path,
        prefix: str) -> tuple[int, list[dict[str, Any]]]:
    rc = main(["transform", "test", "--config", str(path), "--input", str(data),
               "--against-archive", f"s3://{BUCKET}/{prefix}/results/"])
    return rc, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def of_type(out: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in out if line["type"] == kind]


def test_equal_then_a_record_added_then_a_stored_object_altered(
        s3: S3Endpoint, aws_env: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = case.settings_file(tmp_path)
    store(s3, "a1", path)
    lines = archive_lines(s3, "a1")
    data = tmp_path / "archive.ndjson.gz"
    data.write_bytes(gzip.compress(b"\n".join(lines)))  # hour partitions in key order

    rc, out = run(capsys, path, data, "a1")
    results, [comparison] = of_type(out, "result"), of_type(out, "comparison")
    assert rc == 0 and of_type(out, "difference") == []
    assert {r["shard"] for r in results} == {SHARD}
    assert comparison["shard"] == SHARD and comparison["equal_overall"]
    assert comparison["windows"] == comparison["equal"] == len(results) > 0
    assert comparison["objects"] == len(objects(s3, "a1/results/"))
    assert {r["closed_by"] for r in results} == {"watermark", "end_of_input"}

    # A record slipped in after a windowed one, same key and time: its window counts one more.
    windowed = next(r for r in out if r["type"] == "record" and r["line"] > 10)
    extra = orjson.loads(lines[windowed["line"] - 1]) | {"sub_sequence": 1}
    more = tmp_path / "more.ndjson"
    more.write_bytes(b"\n".join([*lines, orjson.dumps(extra)]))
    rc, out = run(capsys, path, more, "a1")
    [diff] = of_type(out, "difference")
    assert rc == 1 and diff["difference"] == "different"
    assert diff["key"] == windowed["key"]
    start = windowed["ts_ms"] - windowed["ts_ms"] % case.SIZE_MS
    assert (diff["window_start_ms"], diff["window_end_ms"]) == (start, start + case.SIZE_MS)
    assert diff["fields"]["count"]["input"] == diff["fields"]["count"]["stored"] + 1
    assert of_type(out, "comparison")[0]["different"] == 1

    # One stored result altered: reported against the original input.
    client = s3.client()
    key = objects(s3, "a1/results/")[-1]
    rows = decode_body(key, client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    rows[0] |= {"max": rows[0]["max"] + 1.0}
    client.put_object(Bucket=BUCKET, Key=key,
                      Body=gzip_body(orjson.dumps(r) + b"\n" for r in rows))
    rc, out = run(capsys, path, data, "a1")
    [diff] = of_type(out, "difference")
    assert rc == 1 and diff["key"] == rows[0]["key"]
    assert diff["window_start_ms"] == rows[0]["window_start_ms"]
    assert diff["fields"] == {"max": {"input": rows[0]["max"] - 1.0, "stored": rows[0]["max"]}}


def test_a_plain_file_compares_with_every_shard(s3: S3Endpoint, aws_env: None,
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Records as a producer sent them (no provenance): the stored results of every shard
    of those hours, merged per window and key; a deleted results object shows as missing."""
    path = case.settings_file(tmp_path)
    store(s3, "b1", path)
    data = tmp_path / "sent.ndjson"
    data.write_bytes(b"\n".join(case.payloads()))
    rc, out = run(capsys, path, data, "b1")
    [comparison] = of_type(out, "comparison")
    assert rc == 0 and comparison["shard"] == "all" and comparison["equal_overall"]
    assert comparison["equal"] == len(of_type(out, "result"))

    key = objects(s3, "b1/results/")[0]
    gone = decode_body(key, s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())
    s3.client().delete_object(Bucket=BUCKET, Key=key)
    rc, out = run(capsys, path, data, "b1")
    # missing; or "open" where the run closed the window only because its input ended
    absent = of_type(out, "difference") + of_type(out, "open")
    assert rc == 1 and {(d["window_start_ms"], tuple(d["key"])) for d in absent} == {
        (r["window_start_ms"], tuple(r["key"])) for r in gone}
    assert "missing" in {d["difference"] for d in of_type(out, "difference")}
    assert all(d["difference"] == "open" for d in of_type(out, "open"))


PER_DEVICE = """
[[aggregation]]
name = "per_device"
group_by = ["device_id"]
[aggregation.window]
size_ms = 30000
allowed_lateness_ms = 4000
out_of_orderness_ms = 2000
"""


def test_each_declared_aggregation_against_its_own_results(
        s3: S3Endpoint, aws_env: None, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A declared aggregation's results are compared with those under agg=<name>/, the
    default's with the others: equal, then one per_device object altered -> only its
    comparison differs."""
    path = case.settings_file(tmp_path, PER_DEVICE)
    store(s3, "c1", path)
    data = tmp_path / "archive.ndjson.gz"
    data.write_bytes(gzip.compress(b"\n".join(archive_lines(s3, "c1"))))
    rc, out = run(capsys, path, data, "c1")
    comparisons = {c["aggregation"]: c for c in of_type(out, "comparison")}
    assert rc == 0 and of_type(out, "difference") == [] and set(comparisons) == {"", "per_device"}
    for agg, c in comparisons.items():
        computed = [r for r in of_type(out, "result") if r["aggregation"] == agg]
        assert c["equal_overall"] and c["windows"] == c["equal"] == len(computed) > 0, agg
    assert comparisons["per_device"]["against"] == f"s3://{BUCKET}/c1/results/agg=per_device/"
    assert comparisons["per_device"]["objects"] == len(objects(s3, "c1/results/agg=per_device/"))
    assert comparisons[""]["objects"] == len(objects(s3, "c1/results/")) - len(
        objects(s3, "c1/results/agg=per_device/"))

    client = s3.client()
    key = objects(s3, "c1/results/agg=per_device/")[0]
    rows = decode_body(key, client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    rows[0] |= {"count": rows[0]["count"] + 1}
    client.put_object(Bucket=BUCKET, Key=key,
                      Body=gzip_body(orjson.dumps(r) + b"\n" for r in rows))
    rc, out = run(capsys, path, data, "c1")
    [diff] = of_type(out, "difference")
    assert rc == 1 and diff["aggregation"] == "per_device" and diff["key"] == rows[0]["key"]
    assert diff["fields"]["count"] == {"input": rows[0]["count"] - 1, "stored": rows[0]["count"]}
    assert {c["aggregation"]: c["equal_overall"] for c in of_type(out, "comparison")} == {
        "": True, "per_device": False}
