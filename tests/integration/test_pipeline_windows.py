"""Window results through the real pipeline into S3 (moto server): exact after a crash.

A worker checkpoints (with its engine snapshot), goes on, flushes more results, and dies
before its next checkpoint. The new owner restores the snapshot and replays from the
checkpoint with different batch boundaries. The S3 results must equal those of one
uninterrupted run: every window once, with the same aggregates. Results objects hold many
windows, and the shard manifest keeps their reservations until a checkpoint covers them.
Stand-in: moto for S3 (If-None-Match enforced as S3 does).
"""

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from consumer.commit.state import SnapshotStore
from consumer.config import Settings, load_settings, with_overrides
from consumer.local.reconcile import ObjectCounter, s3_result_rows
from consumer.pipeline import ShardPipeline
from consumer.records.model import Position, RawRecord
from consumer.sinks.fence import Fenced, FenceToken
from consumer.sinks.layout import Reserved, WindowOrder
from consumer.sinks.manifest import ShardManifest
from consumer.windows.engine import WindowEngine
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

BUCKET = "windows-test"
SHARD = "shardId-000000000007"
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000


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


def records(n: int) -> list[RawRecord]:
    out = []
    for i in range(n):
        ts = T0 + i * 750 - (i * 7919) % 1500  # 5 minutes, bounded disorder
        body = {"device_id": f"d{i % 3}", "metric": "t", "value": i % 17, "ts": ts}
        out.append(RawRecord(orjson.dumps(body), f"d{i % 3}", Position(5000 + i, 0), ts))
    return out


def results(s3: S3Endpoint, prefix: str) -> list[dict[str, Any]]:
    return s3_result_rows(s3.client(), BUCKET, f"{prefix}/results/")


def feed(p: ShardPipeline, recs: list[RawRecord], batch: int) -> None:
    for start in range(0, len(recs), batch):
        p.ingest(recs[start:start + batch], now_ms=0)


def test_results_after_crash_and_restore_equal_one_clean_run(s3: S3Endpoint) -> None:
    recs = records(400)
    clean = make_pipeline(settings("clean"), SHARD, s3.client())
    feed(clean, recs, 50)
    clean.close(now_ms=0)
    clean.flush()

    first = make_pipeline(settings("crash"), SHARD, s3.client())
    feed(first, recs[:200], 50)
    assert first.engine is not None
    snapshot = first.engine.snapshot()  # the state the commit snapshots for this position
    ckpt = RecordingCheckpointer()
    assert first.commit(ckpt)
    checkpoint = ckpt.last
    assert checkpoint == recs[199].position
    feed(first, recs[200:230], 15)
    first.flush()  # after the checkpoint; then the worker dies before its next one

    second = make_pipeline(settings("crash"), SHARD, s3.client(), start=checkpoint,
                           engine=WindowEngine.restore(snapshot))
    feed(second, recs[200:], 33)
    second.close(now_ms=0)
    second.flush()

    expected, got = results(s3, "clean"), results(s3, "crash")
    assert Counter(r["result_id"] for r in got).most_common(1)[0][1] == 1
    by_id = sorted(got, key=lambda r: r["result_id"])
    assert by_id == sorted(expected, key=lambda r: r["result_id"])
    assert sum(r["count"] for r in got) == 400
    assert all(r["is_final"] for r in got)


def test_a_window_closed_by_an_idle_tick_stays_closed_after_a_crash(s3: S3Endpoint) -> None:
    """Idle ticks are processing-time decisions a replay cannot repeat. A window an idle tick
    closed is snapshotted closed before the next record is judged, so after a crash the new
    owner judges a straggler late again: it is in quarantine once and in no window result."""
    cfg = with_overrides(settings("tick"), windows={"idle_timeout_ms": 5_000},
                         flush={"max_age_ms": 0})
    snapshots = SnapshotStore(s3.client(), BUCKET, "tick/state/", cfg.stream.app_name, SHARD)
    first = make_pipeline(cfg, SHARD, s3.client(), snapshots=snapshots)
    window = [RawRecord(orjson.dumps({"device_id": "d", "metric": "t", "value": v,
                                      "ts": T0 + 1_000 * v}), "d", Position(7000 + v, 0), T0)
              for v in range(3)]
    ckpt = RecordingCheckpointer()
    first.ingest(window, now_ms=T0)
    assert first.commit(ckpt)
    first.tick(now_ms=T0 + 600_000)  # idle for 10 minutes: the watermark closes the window
    assert first.ticked and first.commit(ckpt)  # results durable, state snapshotted again
    assert ckpt.positions == [window[-1].position]  # no new record: the checkpoint stays
    straggler = RawRecord(orjson.dumps({"device_id": "d", "metric": "t", "value": 9,
                                        "ts": T0 + 500}), "d", Position(7100, 0), T0)
    first.ingest([straggler], now_ms=T0 + 600_001)
    first.flush()  # quarantined as late, then the worker dies before checkpointing

    found = snapshots.load(window[-1].position)
    assert found is not None and found[1] == 1  # the newest generation: after the tick
    engine = WindowEngine.restore(found[0], T0 + 700_000)
    second = make_pipeline(cfg, SHARD, s3.client(), start=window[-1].position, engine=engine,
                           snapshots=snapshots)
    second.ingest([straggler], now_ms=T0 + 700_000)
    second.close(now_ms=T0 + 700_000)
    second.flush()
    got = results(s3, "tick")
    assert [(r["count"], r["sum"]) for r in got] == [(3, 3.0)]
    late = ObjectCounter(s3.client(), BUCKET, "tick/q/")
    late.refresh()
    assert late.distinct == 1 and late.duplicates == 0


def test_results_objects_hold_many_windows_and_the_manifest_forgets_checkpointed_ones(
        s3: S3Endpoint) -> None:
    """One object per flush, not per window: its rows are whole windows in window order, its
    key names the first and last it holds; results reservations a checkpoint covers are gone
    from the manifest at the next reservation."""
    cfg = with_overrides(settings("many"), windows={"size_ms": 10_000})
    p, ckpt = make_pipeline(cfg, SHARD, s3.client()), RecordingCheckpointer()
    recs = records(400)  # 5 minutes: 30 windows of 10 s, one hour partition
    for lo in range(0, 400, 100):
        feed(p, recs[lo:lo + 100], 100)
        assert p.commit(ckpt)
    client = s3.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="many/results/")
            ["Contents"]]
    assert len(keys) == 4  # one per commit
    rows = []
    for key in sorted(keys):
        got = s3_result_rows(client, BUCKET, key)
        windows = [(r["window_end_ms"], r["window_start_ms"]) for r in got]
        assert windows == sorted(windows) and len(set(windows)) > 1
        first, last = (f"{e:013d}-{s:013d}" for e, s in (windows[0], windows[-1]))
        assert key.rsplit("/", 1)[1].startswith(f"tumbling-{first}-000000_{last}-")
        rows += got
    ids = [r["result_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 3 * 29  # 3 keys, every window but the open last one
    manifest = orjson.loads(client.get_object(
        Bucket=BUCKET, Key=f"many/state/{cfg.stream.app_name}/shard={SHARD}/manifest.json"
    )["Body"].read())
    # Reserved at the fourth commit, after the third checkpoint: only the last object is left.
    assert [r[0] for r in manifest["results"]] == [max(keys)]


def test_results_reservations_load_from_older_manifests_and_fence_a_stale_writer(
        s3: S3Endpoint) -> None:
    client = s3.client()
    key = "fence/state/manifest.json"
    older = orjson.dumps({"token": ["a", 1, 1], "reserved": []})  # before results were reserved
    client.put_object(Bucket=BUCKET, Key=key, Body=older)
    obj = Reserved("fence/res/r1", WindowOrder(20, 10, 0), WindowOrder(40, 30, 2))
    new = ShardManifest(client, BUCKET, key, FenceToken("b", 2, 2))
    new.load()
    assert new.results == [] and new.last_reserved_window("fence/res/") is None
    new.reserve([], [obj])
    again = ShardManifest(client, BUCKET, key, FenceToken("b", 2, 2))
    assert again.last_reserved_window("fence/res/") == (40, 30)
    assert again.results == [obj] and again.last_reserved_window("other/") is None
    stale = ShardManifest(client, BUCKET, key, FenceToken("a", 1, 1))
    with pytest.raises(Fenced):
        stale.reserve([], [Reserved("fence/res/r2", WindowOrder(50, 40, 0),
                                    WindowOrder(50, 40, 0))])
    # Covered by a checkpoint (its windows durable then): gone at the next reservation.
    again.results_checkpointed = (40, 30)
    again.reserve([], [])
    assert ShardManifest(client, BUCKET, key, None).last_reserved_window("fence/res/") is None
