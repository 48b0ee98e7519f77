"""Every archive, quarantine and results object is stored with its format's Content-Type:
Parquet as application/vnd.apache.parquet (its registered media type), gzip NDJSON as
application/x-ndjson. Real S3 protocol: moto's server, read back with HeadObject.
"""

from collections.abc import Iterator

import orjson
import pytest

from consumer.config import load_settings, with_overrides
from consumer.records.model import Position, RawRecord
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

pytestmark = pytest.mark.integration
BUCKET = "content-types"
T0 = 1_795_000_000_000


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


@pytest.mark.parametrize(("fmt", "content_type", "magic"), [
    ("parquet", "application/vnd.apache.parquet", b"PAR1"),
    ("ndjson", "application/x-ndjson", b"\x1f\x8b"),  # gzip-compressed NDJSON
])
def test_objects_carry_their_formats_content_type(
    s3: S3Endpoint, fmt: str, content_type: str, magic: bytes
) -> None:
    prefixes = {kind: f"{fmt}/{kind}/" for kind in ("archive", "quarantine", "results")}
    settings = with_overrides(
        load_settings(None, env={}),
        s3={"bucket": BUCKET, "format": fmt, "state_prefix": f"{fmt}/state/",
            **{f"{kind}_prefix": p for kind, p in prefixes.items()}},
        windows={"size_ms": 60_000, "idle_timeout_ms": 0},
    )
    recs = [RawRecord(orjson.dumps({"device_id": f"d{i % 3}", "metric": "m", "value": i,
                                    "ts": T0 + i}), "pk", Position(100 + i, 0), T0)
            for i in range(20)]
    recs.append(RawRecord(b'{"device_id": ', "pk", Position(200, 0), T0))  # quarantined
    p = make_pipeline(settings, "shardId-000000000002", s3.client())
    p.ingest(recs, now_ms=0)
    p.close(now_ms=0)
    p.flush()
    client = s3.client()
    for kind, prefix in prefixes.items():
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
                .get("Contents", [])]
        assert keys, f"no {kind} object"
        for key in keys:
            obj = client.get_object(Bucket=BUCKET, Key=key)
            assert obj["ContentType"] == content_type, key
            assert obj["Body"].read().startswith(magic), key
