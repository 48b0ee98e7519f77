"""Crash anywhere in the commit, then a new owner replays: every record lands once (hypothesis).

Mixes of valid records, decode rejects and late records, under random flush hints and KCL batch
cuts, with the first owner dying at a random S3 request of a random commit (before it, or after
the object but before the checkpoint, or between the snapshot and the checkpoint). The new owner
restores the newest snapshot at the last checkpoint and replays from there with other cuts. Then
every record is in the archive or quarantine exactly once, every valid record is in exactly
one final window result or quarantined as late, never both, and the S3 results objects (many
windows to an object, reserved in the manifest by window order) hold the same final results,
by content, as one owner that never crashed: none missing, none twice. Tumbling, sliding and
session windows.

Real component: moto server for S3 (If-None-Match and If-Match enforced as S3 does). The crash
is a fault injected at the boto3 client (each call counted; the Nth raises, as if the process
died there): our code runs unchanged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.commit.state import SnapshotStore
from consumer.config import load_settings, with_overrides
from consumer.local.reconcile import ObjectCounter, s3_result_rows
from consumer.records.model import Position, RawRecord
from consumer.windows.engine import WindowEngine
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.pipelines import make_pipeline
from tests.support.servers import S3Endpoint, moto_s3

pytestmark = pytest.mark.integration
BUCKET = "crash-points"
SHARD = "shardId-000000000005"
T0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000
RUNS = iter(range(10**6))


class Died(Exception):
    """The process died at this request (nothing after it happens)."""


class DyingS3:
    """A real boto3 S3 client whose `crash_at`-th request raises instead of being sent."""

    def __init__(self, client: Any, crash_at: int | None) -> None:
        self._client, self._left = client, crash_at

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in ("put_object", "get_object", "delete_object", "list_objects_v2"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._left is not None:
                self._left -= 1
                if self._left < 0:
                    raise Died(name)
            return attr(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        endpoint.client().create_bucket(Bucket=BUCKET)
        yield endpoint


def make_records(kinds: list[int]) -> list[RawRecord]:
    """kind 0: valid, in order; 1: not JSON; 2: valid but 10 minutes behind (late)."""
    out = []
    for i, kind in enumerate(kinds):
        ts = T0 + i * 2_000 - (600_000 if kind == 2 else 0)
        body = (b'{"device_id": "d", "value": ' if kind == 1 else
                orjson.dumps({"device_id": f"d{i % 3}", "metric": "m", "value": i, "ts": ts}))
        out.append(RawRecord(body, f"d{i % 3}", Position(10**20 + i, 0), T0))
    return out


def cuts(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    out, lo = [], 0
    for size in sizes * (n + 1):
        if lo >= n:
            break
        out.append((lo, min(n, lo + size)))
        lo += size
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from([0, 0, 0, 0, 1, 2]), min_size=5, max_size=80),
       first_cuts=st.lists(st.integers(1, 17), min_size=1, max_size=4),
       second_cuts=st.lists(st.integers(1, 23), min_size=1, max_size=4),
       max_records=st.integers(1, 30), crash_at=st.integers(0, 60),
       windows=st.sampled_from([
           {"size_ms": 60_000}, {"size_ms": 10_000},
           {"kind": "sliding", "size_ms": 10_000, "slide_ms": 5_000},
           {"kind": "session", "gap_ms": 7_000}, {"kind": "session", "gap_ms": 5_000}]))
def test_every_record_lands_once_whatever_the_crash_point(
        s3: S3Endpoint, kinds: list[int], first_cuts: list[int], second_cuts: list[int],
        max_records: int, crash_at: int, windows: dict[str, Any]) -> None:
    run = f"run{next(RUNS)}"

    def config(name: str) -> Any:
        return with_overrides(
            load_settings(None, env={}),
            s3={"bucket": BUCKET, "archive_prefix": f"{name}/raw/",
                "quarantine_prefix": f"{name}/q/", "results_prefix": f"{name}/res/",
                "state_prefix": f"{name}/state/"},
            flush={"max_records": max_records, "max_age_ms": 0},
            windows={**windows, "out_of_orderness_ms": 5_000, "idle_timeout_ms": 0},
        )

    cfg = config(run)
    recs = make_records(kinds)

    def snapshots(client: Any) -> SnapshotStore:
        return SnapshotStore(client, BUCKET, cfg.s3.state_prefix, cfg.stream.app_name, SHARD)

    dying = DyingS3(s3.client(), crash_at)
    first = make_pipeline(cfg, SHARD, dying, snapshots=snapshots(dying))
    ckpt = RecordingCheckpointer()
    try:
        for lo, hi in cuts(len(recs), first_cuts):
            first.ingest(recs[lo:hi], now_ms=T0)
            first.commit(ckpt)
        first.close(now_ms=T0)
        first.flush()
    except Died:
        pass
    start = ckpt.last
    client = s3.client()
    found = snapshots(client).load(start) if start else None
    engine = WindowEngine.restore(found[0], T0) if found else None
    second = make_pipeline(cfg, SHARD, client, start=start, engine=engine,
                           snapshots=snapshots(client))
    rest = [r for r in recs if start is None or r.position > start]
    for lo, hi in cuts(len(rest), second_cuts):
        second.ingest(rest[lo:hi], now_ms=T0)
        second.commit(RecordingCheckpointer())
    second.close(now_ms=T0)
    second.flush()

    archive = ObjectCounter(client, BUCKET, f"{run}/raw/")
    quarantine = ObjectCounter(client, BUCKET, f"{run}/q/")
    archive.refresh()
    quarantine.refresh()
    assert archive.duplicates == 0 and quarantine.duplicates == 0
    valid = {r.position.sequence for r, k in zip(recs, kinds, strict=True) if k != 1}
    rejected = {r.position.sequence for r, k in zip(recs, kinds, strict=True) if k == 1}
    assert {int(r["sequence"]) for r in archive.rows} == valid
    by_stage = Counter((r["stage"], int(r["sequence"])) for r in quarantine.rows)
    assert {seq for (stage, seq) in by_stage if stage != "window"} == rejected
    late = {seq for (stage, seq) in by_stage if stage == "window"}
    assert late <= valid
    results = s3_result_rows(client, BUCKET, f"{run}/res/")
    ids = [r["result_id"] for r in results]
    assert len(ids) == len(set(ids))
    if windows.get("kind") != "sliding":  # a sliding record is in size / slide windows
        assert sum(r["count"] for r in results) + len(late) == len(valid)
    # The same final results, by content, as one owner that never crashed.
    clean = make_pipeline(config(f"{run}-clean"), SHARD, client)
    for lo, hi in cuts(len(recs), first_cuts):
        clean.ingest(recs[lo:hi], now_ms=T0)
        clean.commit(RecordingCheckpointer())
    clean.close(now_ms=T0)
    clean.flush()
    want = s3_result_rows(client, BUCKET, f"{run}-clean/res/")
    assert want and sorted(map(_content, results)) == sorted(map(_content, want))


def _content(row: dict[str, Any]) -> bytes:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS)
