"""A document OpenSearch refuses (4xx) is quarantined with the server's reason; the batch and
the shard go on. Real servers: osmem-server (OpenSearch's bulk protocol and per-item errors,
as OpenSearch answers them) and moto for S3.
"""

from collections.abc import Iterator

import orjson
import pytest
from opensearchpy import OpenSearch

from consumer.config import load_settings, with_overrides
from consumer.records.model import Position, RawRecord
from consumer.sinks.opensearch import daily_index
from consumer.sinks.quarantine import Filter, summarize
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3, osmem

BUCKET = "os-reject"
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[S3Endpoint, str]]:
    with moto_s3() as s3, osmem() as url:
        s3.client().create_bucket(Bucket=BUCKET)
        yield s3, url


def test_refused_results_are_quarantined_and_the_rest_delivered(
    servers: tuple[S3Endpoint, str],
) -> None:
    s3, url = servers
    settings = with_overrides(
        load_settings(None, env={}), s3={"bucket": BUCKET},
        windows={"size_ms": 60_000, "idle_timeout_ms": 0},
        opensearch={"enabled": True, "endpoint": url, "index_prefix": "rej", "auth": "none"},
    )
    # An index made by hand with a mapping our documents break: "count" must be a boolean.
    client = OpenSearch(hosts=[url])
    client.indices.create(index=daily_index("rej", "results", T0),
                          body={"mappings": {"properties": {"count": {"type": "boolean"}}}})
    p = make_pipeline(settings, "shardId-000000000001", s3.client())
    recs = [RawRecord(orjson.dumps({"device_id": f"d{i % 4}", "metric": "t", "value": i,
                                    "ts": T0 + i * 100}), "pk", Position(900 + i, 0), T0)
            for i in range(40)]
    p.ingest(recs, now_ms=0)
    p.close(now_ms=0)
    report = p.flush()

    summary = summarize(s3.client(), BUCKET, "quarantine/", Filter(stage="sink:opensearch"))
    assert summary.records == 4  # one result per device, every one refused
    assert set(summary.by_reason) == {("sink:opensearch", "mapper_parsing_exception")}
    assert report["s3-archive"] == 40
    assert report["s3-results"] == 4
    ckpt = RecordingCheckpointer()
    assert p.commit(ckpt) and ckpt.last == recs[-1].position  # the shard is not stuck on them
