"""Property tests: WindowEngine.process_records (decode + windows in one pass, columnar for
clean batches) is exactly decode_batch followed by process, step by step: the same events,
rejections, results (in order), late records, watermark and snapshot."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.local.producer import POISON_KINDS, ProducerSpec, generate
from consumer.records.contract import Contract
from consumer.records.decode import MAX_MS, MIN_MS, decode_batch, decode_columns
from consumer.records.model import Event, Position, RawRecord
from consumer.windows import WindowEngine, WindowSpec, kinds

SHARD = "shardId-000000000003"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
Steps = list[tuple[list[RawRecord], int]]  # batches (empty: a tick) and processing time
BASES = [1_795_687_199_337, 1_795_687_140_000, 0, MAX_MS - 400_000, MIN_MS + 1_000]


def iso(ms: int, shape: str) -> str:
    dt = EPOCH + timedelta(milliseconds=ms)
    day = f"{dt.year:04d}-{dt:%m-%d}"
    sec = f"{dt:%H:%M:%S}"
    frac = f"{dt.microsecond // 1000:03d}"
    return {
        "z3": f"{day}T{sec}.{frac}Z",
        "lower": f"{day}t{sec}.{frac}z",
        "z6": f"{day}T{sec}.{frac}999Z",
        "plus0": f"{day}T{sec}.{frac}+00:00",
        "nofrac": f"{day}T{sec}Z",
    }[shape]


@st.composite
def payload(draw: st.DrawFn, ms: int) -> bytes:
    """A record at event time ms: mostly the clean common shape, sometimes not."""
    obj: dict[str, object] = {
        "device_id": draw(st.sampled_from(["d1", "d2", "dé", "d3"])),
        "metric": draw(st.sampled_from(["m", "n"])),
        "value": draw(st.one_of(st.integers(-50, 50), st.integers(-50, 50).map(lambda i: i / 4))),
        "ts": ms,
    }
    if draw(st.booleans()):
        shapes = ["z3"] * 6 + ["lower", "z6", "plus0", "nofrac"]
        obj["ts"] = iso(ms, draw(st.sampled_from(shapes)))
    flaw = draw(st.sampled_from(["none"] * 12 + ["extra", "empty", "string", "float", "broken",
                                                 "deep", "abyss", "bad_utf8", "brace",
                                                 "array"]))
    if flaw == "extra":
        obj["extra"] = [1]
    elif flaw == "deep":  # beyond every contract's max_depth, in a field no path reads
        obj["extra"] = json.loads("[" * 40 + "]" * 40)
    elif flaw == "bad_utf8":  # in a field no path reads: msgspec skips it unchecked
        obj["extra"] = "BAD"
    elif flaw == "brace":  # brackets inside a string: no depth at all
        obj["extra"] = "{[{["
    elif flaw == "empty":
        obj["metric"] = ""
    elif flaw == "string":
        obj["value"] = "1"
    elif flaw == "float":
        obj["ts"] = 1.5
    raw = json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()
    if flaw == "bad_utf8":
        raw = raw.replace(b"BAD", b"\xff\xfe")
    elif flaw == "abyss":  # beyond msgspec's own nesting limit, in a field no path reads
        raw = raw[:-1] + b', "abyss": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif flaw == "array":
        raw = b"[" + raw + b"]"
    return raw[:-3] if flaw == "broken" else raw


@st.composite
def streams(draw: st.DrawFn) -> Steps:
    """Batches (some empty: ticks) of out-of-order records in shard order."""
    base = draw(st.sampled_from(BASES))
    clean = draw(st.booleans())  # half the streams have no flawed record at all
    steps: Steps = []
    now, i = 0, 0
    for _ in range(draw(st.integers(1, 8))):
        now += draw(st.integers(0, 80))
        batch = []
        for _ in range(draw(st.integers(0, 12))):
            jitter = draw(st.integers(-25, 25)) if draw(st.integers(0, 9)) else -draw(
                st.integers(0, 300)
            )
            ms = min(MAX_MS, max(MIN_MS, base + i * 3 + jitter))
            data = draw(payload(ms))
            if clean:
                data = json.dumps(
                    {"device_id": "d1", "metric": "m", "value": 1.0, "ts": iso(ms, "z3")}
                ).encode()
            pos = Position(10**30 + i // 3, i % 3)
            batch.append(RawRecord(data, "pk", pos, now))
            i += 1
        steps.append((batch, now))
    return steps


@st.composite
def specs(draw: st.DrawFn) -> WindowSpec:
    kind = draw(st.sampled_from(["tumbling"] * 4 + ["sliding", "session"]))
    return WindowSpec(
        kind=kind,  # type: ignore[arg-type]
        size_ms=draw(st.sampled_from([10, 60])),
        slide_ms=5,
        gap_ms=20,
        allowed_lateness_ms=draw(st.sampled_from([0, 10, 40])),
        out_of_orderness_ms=draw(st.sampled_from([0, 5, 20])),
        idle_timeout_ms=draw(st.sampled_from([None, 50])),
        quantiles=draw(st.integers(0, 5)) == 0,
    )


contracts = st.sampled_from(
    [
        Contract(),
        Contract(ts_format="iso"),
        Contract(ts_format="epoch_ms"),
        Contract(key_fields=("device_id",)),
        Contract(max_record_bytes=90, max_depth=2),
    ]
)


@settings(max_examples=300, deadline=None)
@given(specs(), contracts, streams(), st.data())
def test_process_records_is_decode_batch_then_process(
    spec: WindowSpec, contract: Contract, steps: Steps, data: st.DataObject
) -> None:
    ref, eng = WindowEngine(spec, SHARD), WindowEngine(spec, SHARD)
    restore_at = data.draw(st.integers(0, len(steps)))
    for n, (records, now) in enumerate(steps):
        if n == restore_at:  # a takeover mid-stream, and KCL replays the last batch
            ref, eng = WindowEngine.restore(ref.snapshot()), WindowEngine.restore(eng.snapshot())
            if n:
                prev, prev_now = steps[n - 1]
                events, rejected = decode_batch(prev, contract)
                assert eng.process_records(prev, contract, prev_now) == (
                    events,
                    rejected,
                    ref.process(events, prev_now),
                )
        events, rejected = decode_batch(records, contract)
        want = ref.process(events, now)
        got = eng.process_records(records, contract, now)
        assert got == (events, rejected, want)
        assert eng.watermark_ms == ref.watermark_ms
        assert eng.open_windows == ref.open_windows
        assert eng.late_count == ref.late_count
        assert eng.replayed_skipped == ref.replayed_skipped
        assert eng.snapshot() == ref.snapshot()
    assert eng.close_all() == ref.close_all()


@settings(max_examples=300, deadline=None)
@given(contracts, streams())
def test_decode_columns_is_decode_batch(contract: Contract, steps: Steps) -> None:
    for records, _ in steps:
        events, rejected = decode_batch(records, contract)
        cols = decode_columns(records, contract)
        if cols is not None:
            assert list(map(Event, cols.keys, cols.ts, cols.values, cols.records)) == events
            assert cols.rejected == rejected
            assert all(type(v) is float for v in cols.values)


def test_clean_batches_take_the_columnar_path() -> None:
    """The fast path really runs for the common shapes (else the properties prove little):
    epoch ms, ISO, both in one batch, a field beyond the contract's."""
    recs = [
        RawRecord(
            json.dumps({"device_id": "d", "metric": "m", "value": 1, "ts": t, "seq": i}).encode(),
            "pk",
            Position(i, 0),
            0,
        )
        for i, t in enumerate([1_795_687_199_337, "2026-11-26T09:59:59.337Z"])
    ]
    for batch in (recs[:1], recs[1:], recs):
        cols = decode_columns(batch, Contract())
        assert cols is not None and cols.records == batch


def test_demo_batches_with_every_poison_take_the_columnar_path() -> None:
    """The demo producer's records, 5% poison of every kind: each batch of 200 is windowed by
    columns, its poison rejected exactly as decode_batch rejects it."""
    users = list(generate(ProducerSpec(records=2_000, poison_ratio=0.05)))
    assert {u.poison for u in users} >= set(POISON_KINDS)
    records = [RawRecord(u.data, u.partition_key, Position(i, 0), 0) for i, u in enumerate(users)]
    for at in range(0, len(records), 200):
        batch = records[at : at + 200]
        cols = decode_columns(batch, Contract())
        assert cols is not None
        events, rejected = decode_batch(batch, Contract())
        assert list(map(Event, cols.keys, cols.ts, cols.values, cols.records)) == events
        assert cols.rejected == rejected and rejected


@settings(max_examples=200, deadline=None)
@given(specs(), contracts, streams(), st.data())
def test_lateness_blocks_of_any_size(
    spec: WindowSpec, contract: Contract, steps: Steps, data: st.DataObject
) -> None:
    """The per-block lateness check, with blocks smaller than a batch (as in production)."""
    saved = kinds.LATE_BLOCK
    kinds.LATE_BLOCK = data.draw(st.integers(1, 5))
    try:
        ref, eng = WindowEngine(spec, SHARD), WindowEngine(spec, SHARD)
        for records, now in steps:
            events, rejected = decode_batch(records, contract)
            assert eng.process_records(records, contract, now) == (
                events,
                rejected,
                ref.process(events, now),
            )
            assert eng.snapshot() == ref.snapshot()
    finally:
        kinds.LATE_BLOCK = saved
