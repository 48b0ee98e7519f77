"""Quarantine: bad records land with their raw bytes and reason, and replay puts them back.

Stand-in: moto's server for S3 and Kinesis (PutRecords/GetRecords over real HTTP); resharding
is not involved, which is the part of moto's Kinesis that is broken.
"""

from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config

from consumer.config import load_settings, with_overrides
from consumer.records.model import Position, RawRecord
from consumer.sinks import quarantine as q
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

BUCKET, STREAM, PREFIX = "quarantine-test", "fixed-stream", "quarantine/"
BAD = [b'{"device_id": 1', b"\xff\xfe\x00", b"[1]", orjson.dumps({"device_id": "d", "metric": "m"})]


def client(endpoint: S3Endpoint, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint.url, region_name="us-east-1",
                        aws_access_key_id="t", aws_secret_access_key="t",
                        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        client(endpoint, "s3").create_bucket(Bucket=BUCKET)
        client(endpoint, "kinesis").create_stream(StreamName=STREAM, ShardCount=1)
        yield endpoint


def quarantine_bad_records(moto: S3Endpoint) -> None:
    settings = with_overrides(load_settings(None, env={}), s3={"bucket": BUCKET},
                              windows={"enabled": False})
    p = make_pipeline(settings, "shardId-000000000000", client(moto, "s3"))
    p.ingest([RawRecord(d, f"pk{i}", Position(100 + i, 0), 1_795_000_000_000)
              for i, d in enumerate(BAD)], now_ms=0)
    p.flush()


def read_stream(moto: S3Endpoint) -> list[tuple[str, bytes]]:
    kinesis = client(moto, "kinesis")
    shard = kinesis.list_shards(StreamName=STREAM)["Shards"][0]["ShardId"]
    it = kinesis.get_shard_iterator(StreamName=STREAM, ShardId=shard,
                                    ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = kinesis.get_records(ShardIterator=it)["Records"]
    return [(r["PartitionKey"], r["Data"]) for r in records]


def test_ls_counts_by_reason_and_replay_puts_raw_bytes_back_once(moto: S3Endpoint) -> None:
    quarantine_bad_records(moto)
    s3 = client(moto, "s3")
    summary = q.summarize(s3, BUCKET, PREFIX, q.Filter())
    assert summary.records == len(BAD)
    assert sum(summary.by_reason.values()) == len(BAD)
    assert ("contract", "missing_field") in summary.by_reason or (
        "decode", "missing_field") in summary.by_reason

    only_json = q.replay(s3, client(moto, "kinesis"), BUCKET, PREFIX, STREAM,
                         q.Filter(reason="invalid_json"), dry_run=True)
    assert only_json.records == 1 and read_stream(moto) == []

    first = q.replay(s3, client(moto, "kinesis"), BUCKET, PREFIX, STREAM, q.Filter())
    assert first.records == len(BAD)
    assert sorted(read_stream(moto)) == sorted((f"pk{i}", d) for i, d in enumerate(BAD))

    again = q.replay(s3, client(moto, "kinesis"), BUCKET, PREFIX, STREAM, q.Filter())
    assert again.records == 0 and again.skipped_objects == first.objects
    assert len(read_stream(moto)) == len(BAD)
