"""A shard's pipeline against a real S3 protocol server (moto's ThreadedMotoServer).

Stand-in: moto for S3, because it enforces If-None-Match like S3 does (SINK-STANDINS.md).
The replay test is the exactly-once rule for objects: a new owner that resumes from an older
checkpoint, with different batch boundaries, must not write any record twice.
"""

from collections import Counter
from collections.abc import Iterator

import orjson
import pytest

from consumer.config import load_settings, with_overrides
from consumer.local.reconcile import ObjectCounter
from consumer.metrics.registry import REGISTRY
from consumer.pipeline import RECORD_OVERHEAD, ShardPipeline, WindowStateTooLarge
from consumer.records.model import Position, RawRecord
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline as build_pipeline
from tests.support.servers import S3Endpoint, moto_s3

BUCKET = "pipeline-test"
HOUR_MS = 3_600_000
T0 = 1_795_000_000_000


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


def records(n: int) -> list[RawRecord]:
    out = []
    for i in range(n):
        pos = Position(10_000 + (i // 4) * 10, i % 4)  # groups of 4 share a sequence (KPL)
        if i % 29 == 7:
            data = b'{"device_id": "d", "value": '  # invalid JSON -> quarantine
        else:
            ts = T0 + (i % 3) * HOUR_MS + i  # three hour partitions
            data = orjson.dumps({"device_id": f"d{i % 5}", "metric": "m", "value": i, "ts": ts})
        out.append(RawRecord(data, f"d{i % 5}", pos, T0 + i))
    return out


def make_pipeline(s3: S3Endpoint, prefix: str, start: Position | None = None,
                  fmt: str = "ndjson") -> ShardPipeline:
    settings = with_overrides(
        load_settings(None, env={}),
        s3={
            "bucket": BUCKET,
            "archive_prefix": f"{prefix}/raw/",
            "quarantine_prefix": f"{prefix}/quarantine/",
            "results_prefix": f"{prefix}/results/",
            "state_prefix": f"{prefix}/state/",  # each test its own manifest and snapshots
            "format": fmt,
        },
        flush={"max_records": 100_000, "max_age_ms": 10**9},
        windows={"enabled": False},
    )
    return build_pipeline(settings, "shardId-000000000003", s3.client(), start)


def counted(s3: S3Endpoint, prefix: str) -> tuple[ObjectCounter, ObjectCounter]:
    archive = ObjectCounter(s3.client(), BUCKET, f"{prefix}/raw/")
    quarantine = ObjectCounter(s3.client(), BUCKET, f"{prefix}/quarantine/")
    archive.refresh()
    quarantine.refresh()
    return archive, quarantine


def quarantined_metric(reason: str) -> float:
    value = REGISTRY.get_sample_value("aetherstream_records_quarantined_total",
                                      {"shard": "shardId-000000000003", "reason": reason})
    return value or 0.0


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_every_record_lands_once_in_archive_or_quarantine(s3: S3Endpoint, fmt: str) -> None:
    recs = records(200)
    p = make_pipeline(s3, f"once-{fmt}", fmt=fmt)
    counted_before = quarantined_metric("invalid_json")
    for start in range(0, 200, 50):
        p.ingest(recs[start : start + 50], now_ms=0)
    report = p.flush()
    archive, quarantine = counted(s3, f"once-{fmt}")
    assert archive.duplicates == quarantine.duplicates == 0
    assert archive.distinct + quarantine.distinct == 200
    assert quarantine.distinct == sum(1 for i in range(200) if i % 29 == 7)
    assert report["s3-archive"] == archive.distinct
    assert report["s3-quarantine"] == quarantine.distinct
    ckpt = RecordingCheckpointer()
    assert p.commit(ckpt) and ckpt.positions == [recs[-1].position]
    reasons = Counter(r["reason"] for r in quarantine.rows)
    assert set(reasons) == {"invalid_json"}
    # the metric counts each quarantined record once, by its reason
    assert quarantined_metric("invalid_json") - counted_before == quarantine.distinct


@pytest.mark.parametrize("fmt", ["ndjson", "parquet"])
def test_replay_from_an_older_checkpoint_writes_nothing_twice(s3: S3Endpoint, fmt: str) -> None:
    recs = records(300)
    first = make_pipeline(s3, f"replay-{fmt}", fmt=fmt)
    for start in range(0, 240, 60):  # flushes 4 batches, then "crashes" before checkpointing
        first.ingest(recs[start : start + 60], now_ms=0)
        first.flush()
    checkpoint = recs[59].position  # only the first batch's checkpoint reached DynamoDB

    second = make_pipeline(s3, f"replay-{fmt}", start=checkpoint, fmt=fmt)
    rest = recs[60:]
    for start in range(0, len(rest), 37):  # different batch boundaries on the replay
        second.ingest(rest[start : start + 37], now_ms=0)
        second.flush()

    archive, quarantine = counted(s3, f"replay-{fmt}")
    assert archive.duplicates == 0 and quarantine.duplicates == 0
    assert archive.distinct + quarantine.distinct == 300


def test_checkpoint_only_after_everything_buffered_is_durable(s3: S3Endpoint) -> None:
    p = make_pipeline(s3, "commit")
    recs = records(20)
    ckpt = RecordingCheckpointer()
    p.ingest(recs[:10], now_ms=0)
    assert p.commit(ckpt) and ckpt.last == recs[9].position
    p.ingest(recs[10:], now_ms=0)  # buffered, not durable: the checkpoint stays
    assert not p.commit(RecordingCheckpointer(["ThrottlingException"] * 8))
    assert p.committer.checkpointed == recs[9].position
    archive, quarantine = counted(s3, "commit")
    assert archive.distinct + quarantine.distinct == 20  # drained before the refused checkpoint
    assert p.commit(ckpt) and ckpt.last == recs[19].position
    assert not p.commit(ckpt)  # nothing new


def test_buffered_records_count_once_against_the_budget(s3: S3Endpoint) -> None:
    """Each record is charged once however many routes hold it; over the budget a commit is
    due, and a commit that drained everything frees it."""
    settings = with_overrides(
        load_settings(None, env={}),
        s3={"bucket": BUCKET, "archive_prefix": "budget/raw/", "quarantine_prefix": "budget/q/",
            "results_prefix": "budget/results/", "state_prefix": "budget/state/"},
        flush={"max_records": 100_000, "max_age_ms": 10**9, "max_buffer_bytes": 1 << 20},
        windows={"enabled": False},
    )
    p = build_pipeline(settings, "shardId-000000000004", s3.client())
    recs = records(1000)
    p.ingest(recs[:500], now_ms=0)
    held = sum(len(r.data) for r in recs[:500]) + RECORD_OVERHEAD * 500
    assert p.budget.used_bytes == held and not p.flush_due(0)
    big = [RawRecord(b"x" * 4000, "k", Position(99_000 + i, 0), T0) for i in range(300)]
    p.ingest(big, now_ms=0)  # 1.2 MB more: over the 1 MiB budget
    assert p.flush_due(0)
    assert p.commit(RecordingCheckpointer()) and p.budget.used_bytes == 0


def test_window_state_past_its_limit_fails_loudly(s3: S3Endpoint) -> None:
    settings = with_overrides(
        load_settings(None, env={}),
        s3={"bucket": BUCKET, "archive_prefix": "state/raw/", "quarantine_prefix": "state/q/",
            "results_prefix": "state/results/", "state_prefix": "state/state/"},
        windows={"max_state_bytes": 1 << 20},
    )
    p = build_pipeline(settings, "shardId-000000000004", s3.client())
    many = [RawRecord(orjson.dumps({"device_id": f"d{i}", "metric": "m", "value": 1,
                                    "ts": T0}), "k", Position(1 + i, 0), T0)
            for i in range(10_000)]  # 10,000 open groups, a few hundred bytes each
    with pytest.raises(WindowStateTooLarge, match=r"windows\.max_state_bytes"):
        for lo in range(0, len(many), 1000):
            p.ingest(many[lo:lo + 1000], now_ms=0)


def test_parquet_keeps_records_with_lone_surrogates(s3: S3Endpoint) -> None:
    """A lone surrogate escape in a non-contract field is valid JSON that orjson and Arrow
    refuse; in Parquet the record is still written (the field as its escaped JSON text),
    never retried forever."""
    p = make_pipeline(s3, "surrogate", fmt="parquet")
    odd = RawRecord(b'{"device_id": "d", "metric": "m", "value": 1, "ts": 1795000000000, '
                    b'"note": "\\ud800", "more": {"x": "\\udfff"}}', "d", Position(77, 0), T0)
    p.ingest([odd, *records(3)], now_ms=0)
    assert p.commit(RecordingCheckpointer())
    archive, quarantine = counted(s3, "surrogate")
    assert archive.distinct + quarantine.distinct == 4 and archive.duplicates == 0
    row = next(r for r in archive.rows if r["sequence"] == "77")
    assert "\\ud800" in row["payload"] and "\\udfff" in row["payload"]
