"""Unit tests for window edges: boundaries, UTC alignment, ties, sessions, quantiles, merge."""

from __future__ import annotations

import gc
import random

import pytest
from ddsketch import DDSketch

from consumer.records.decode import parse_timestamp
from consumer.records.model import Event, Position, RawRecord
from consumer.windows import (
    QuantileSketch,
    StepOutput,
    WindowEngine,
    WindowResult,
    WindowSpec,
    merge,
    result_id,
)
from consumer.windows.sketch import sketch_bytes

MIN = 60_000


def ev(ts: int, value: float = 1.0, key: str = "a", seq: int = 0) -> Event:
    return Event((key, "m"), ts, value, RawRecord(b"{}", "pk", Position(seq, 0), 0))


def feed(eng: WindowEngine, *events: Event, now: int = 0) -> StepOutput:
    return eng.process(list(events), now)


def spans(out: StepOutput) -> list[tuple[int, int, int, bool]]:
    return [(r.start_ms, r.end_ms, r.aggregates.count, r.is_final) for r in out.results]


def test_tumbling_boundaries_are_half_open_and_utc_aligned() -> None:
    eng = WindowEngine(WindowSpec(size_ms=MIN, out_of_orderness_ms=0), "s")
    t0 = parse_timestamp("2026-11-26T10:00:00.000Z")
    out = feed(eng, ev(t0 - 1), ev(t0), ev(t0 + MIN - 1), ev(t0 + MIN))
    # The watermark (t0 + MIN) closes [t0 - MIN, t0) and [t0, t0 + MIN) but not the next.
    assert spans(out) == [(t0 - MIN, t0, 1, True), (t0, t0 + MIN, 2, True)]
    assert eng.open_windows == 1
    assert spans(eng.close_all()) == [(t0 + MIN, t0 + 2 * MIN, 1, True)]


def test_offset_timestamps_land_in_the_same_utc_window() -> None:
    a = parse_timestamp("2026-11-26T10:00:30+02:00")
    b = parse_timestamp("2026-11-26T08:00:45Z")
    eng = WindowEngine(WindowSpec(size_ms=MIN), "s")
    feed(eng, ev(a), ev(b))
    (r,) = eng.close_all().results
    assert (r.start_ms, r.aggregates.count) == (parse_timestamp("2026-11-26T08:00:00Z"), 2)


def test_identical_timestamps_and_single_record_key() -> None:
    eng = WindowEngine(WindowSpec(size_ms=10, out_of_orderness_ms=0), "s")
    feed(eng, ev(5, 2.0), ev(5, -1.0), ev(5, 7.0), ev(5, 3.0, key="solo"))
    by_key = {r.key: r.aggregates for r in eng.close_all().results}
    a, solo = by_key[("a", "m")], by_key[("solo", "m")]
    assert (a.count, a.sum, a.min, a.max, a.first_ts_ms, a.last_ts_ms) == (3, 8.0, -1.0, 7.0, 5, 5)
    assert (solo.count, solo.mean, solo.min, solo.max) == (1, 3.0, 3.0, 3.0)


def test_lateness_reemits_same_id_then_final_then_late_side_output() -> None:
    spec = WindowSpec(size_ms=10, allowed_lateness_ms=10, out_of_orderness_ms=0)
    eng = WindowEngine(spec, "s")
    first = feed(eng, ev(1), ev(12))  # W = 12 >= 10: emitted, not final
    assert spans(first) == [(0, 10, 1, False)]
    again = feed(eng, ev(3, seq=1))  # late but within lateness: corrected, same id
    assert spans(again) == [(0, 10, 2, False)]
    assert again.results[0].result_id == first.results[0].result_id
    final = feed(eng, ev(20, seq=2))  # W = 20 = end + lateness: final
    assert spans(final) == [(0, 10, 2, True), (10, 20, 1, False)]
    too_late = feed(eng, ev(4, seq=3))
    assert too_late.results == [] and len(too_late.late) == 1
    assert (too_late.late[0].stage, too_late.late[0].reason) == ("window", "late")
    assert eng.late_count == 1


def test_sliding_record_in_every_overlapping_window() -> None:
    eng = WindowEngine(WindowSpec(kind="sliding", size_ms=30, slide_ms=10), "s")
    feed(eng, ev(25))
    assert sorted(r.start_ms for r in eng.close_all().results) == [0, 10, 20]


def test_session_merge_when_a_record_bridges_two_sessions() -> None:
    spec = WindowSpec(kind="session", gap_ms=10, out_of_orderness_ms=100)
    eng = WindowEngine(spec, "s")
    feed(eng, ev(0, 1.0), ev(25, 2.0))
    assert eng.open_windows == 2
    feed(eng, ev(12, 4.0))  # [12, 22) touches neither [0, 10) nor [25, 35)
    assert eng.open_windows == 3
    feed(eng, ev(9, 8.0), ev(20, 16.0))  # bridges all three
    assert eng.open_windows == 1
    (r,) = eng.close_all().results
    assert (r.start_ms, r.end_ms, r.aggregates.count, r.aggregates.sum) == (0, 35, 5, 31.0)


def test_session_lateness_is_judged_by_record_time_and_final_stays_final() -> None:
    spec = WindowSpec(kind="session", gap_ms=10, allowed_lateness_ms=5, out_of_orderness_ms=0)
    eng = WindowEngine(spec, "s")
    assert spans(feed(eng, ev(0), ev(30))) == [(0, 10, 1, True)]  # W = 30 >= 10 + 5
    out = feed(eng, ev(24, seq=1))  # 24 < W - 5: late, although [24, 34) would reach 30
    assert len(out.late) == 1
    out = feed(eng, ev(26, seq=1))  # 26 >= W - 5: extends [30, 40) back to [26, 40)
    assert out.late == [] and eng.open_windows == 1
    out = feed(eng, ev(9, seq=2))  # would touch the emitted [0, 10): late
    assert len(out.late) == 1 and out.results == []
    assert spans(eng.close_all()) == [(26, 40, 2, True)]


def test_session_exact_gap_starts_a_new_session() -> None:
    eng = WindowEngine(WindowSpec(kind="session", gap_ms=10, out_of_orderness_ms=0), "s")
    out = feed(eng, ev(0), ev(10), ev(30))
    assert spans(out) == [(0, 10, 1, True), (10, 20, 1, True)]


def test_idle_tick_closes_windows_of_a_quiet_shard() -> None:
    spec = WindowSpec(size_ms=MIN, out_of_orderness_ms=5_000, idle_timeout_ms=10_000)
    eng = WindowEngine(spec, "s")
    feed(eng, ev(1_000), now=1_000_000)
    assert eng.tick(1_009_999).results == []  # not idle long enough
    assert eng.watermark_ms == 1_000 - 5_000
    out = eng.tick(1_000_000 + 10_000 + 64_000)
    assert spans(out) == [(0, MIN, 1, True)]


def test_gc_is_restored_after_a_batch() -> None:
    eng = WindowEngine(WindowSpec(), "s")
    feed(eng, ev(1))
    assert gc.isenabled()


def test_process_after_close_all_is_an_error() -> None:
    eng = WindowEngine(WindowSpec(), "s")
    eng.close_all()
    with pytest.raises(ValueError, match="close_all"):
        feed(eng, ev(1))


def test_quantiles_equal_ddsketch_and_merge_across_shards() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(0, 2) * rng.choice([-1, 1, 1]) for _ in range(500)] + [0.0]
    spec = WindowSpec(size_ms=10, quantiles=True, quantile_accuracy=0.02)
    half = len(values) // 2
    parts = []
    for shard, chunk in (("A", values[:half]), ("B", values[half:])):
        eng = WindowEngine(spec, shard)
        feed(eng, *(ev(5, v) for v in chunk))
        (r,) = eng.close_all().results
        parts.append(r)
    merged = merge(parts[0], parts[1])
    ref = DDSketch(0.02)
    for v in values:
        ref.add(v)
    for q in (0.0, 0.01, 0.5, 0.9, 0.99, 1.0):
        assert merged.aggregates.quantile(q) == pytest.approx(ref.get_quantile_value(q))
    assert merged.aggregates.count == len(values)
    assert merged.shard_id == "A+B" and merged.is_final
    assert set(merged.aggregates.quantiles()) == {"p50", "p90", "p99"}


def test_fast_sketch_bytes_equal_the_sketch_class() -> None:
    rng = random.Random(3)
    values = [rng.uniform(-1e6, 1e6) for _ in range(200)] + [0.0, 1e-320, -5e-324]
    for n in (1, 2, 50, len(values)):
        assert sketch_bytes(values[:n], 0.01) == QuantileSketch(0.01).add_all(values[:n]).to_bytes()


def test_sketch_roundtrip_and_accuracy_mismatch() -> None:
    s = QuantileSketch(0.01).add_all([1.0, 2.0, 3.0])
    assert QuantileSketch.from_bytes(s.to_bytes()).quantile(0.5) == s.quantile(0.5)
    with pytest.raises(ValueError, match="accuracy"):
        s.merge(QuantileSketch(0.05))


def test_merge_rejects_different_windows_and_ids_are_deterministic() -> None:
    eng = WindowEngine(WindowSpec(size_ms=10), "s")
    feed(eng, ev(1), ev(15))
    a, b = eng.close_all().results
    assert isinstance(a, WindowResult)
    with pytest.raises(ValueError, match="different"):
        merge(a, b)
    assert a.result_id == result_id("tumbling", 0, 10, ("a", "m"), "s")
    assert a.result_id != result_id("tumbling", 0, 10, ("a", "m"), "t")
    assert len({a.result_id, b.result_id}) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "hopping"}, "kind"),
        ({"size_ms": 0}, "size_ms"),
        ({"kind": "sliding", "size_ms": 10, "slide_ms": 3}, "slide_ms"),
        ({"kind": "sliding", "size_ms": 10}, "slide_ms"),
        ({"kind": "session"}, "gap_ms"),
        ({"allowed_lateness_ms": -1}, "allowed_lateness_ms"),
        ({"out_of_orderness_ms": 1.5}, "out_of_orderness_ms"),
        ({"idle_timeout_ms": 0}, "idle_timeout_ms"),
        ({"quantile_accuracy": 1.0}, "quantile_accuracy"),
    ],
)
def test_spec_validation_names_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        WindowSpec(**kwargs)  # type: ignore[arg-type]


def test_snapshot_rejects_other_versions_and_keeps_big_positions() -> None:
    eng = WindowEngine(WindowSpec(kind="session", gap_ms=5, quantiles=True), "s")
    big = 49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136_588_898
    eng.process([Event(("k",), 1, 2.0, RawRecord(b"", "p", Position(big, 3), 0))], 0)
    back = WindowEngine.restore(eng.snapshot())
    # The snapshot keeps the last position processed: a replay of it is skipped.
    assert back.process([Event(("k",), 3, 9.0, RawRecord(b"", "p", Position(big, 3), 0))],
                        0) == StepOutput([], [])
    assert back.replayed_skipped == 1
    assert back.close_all() == eng.close_all()
    with pytest.raises(ValueError, match="version"):
        WindowEngine.restore(eng.snapshot().replace(b"\xa7version\x01", b"\xa7version\x02"))
