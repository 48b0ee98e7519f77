"""Property tests: WindowEngine against a simple batch oracle over the same records.

The oracle keeps every accepted record per (window, key), never frees anything, and at each
step derives what must be emitted by re-grouping from scratch. Values are small integers so
sums are exact whatever the order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.windows import QuantileSketch, StepOutput, WindowEngine, WindowSpec, result_id

NEG = -(2**62)
SHARD = "shardId-000000000007"

Step = tuple[list[Event], int]  # events ([] = tick), processing time


@st.composite
def specs(
    draw: st.DrawFn, kinds: tuple[str, ...] = ("tumbling", "sliding", "session")
) -> WindowSpec:
    kind = draw(st.sampled_from(kinds))
    size = draw(st.sampled_from([10, 30, 60]))
    return WindowSpec(
        kind=kind,  # type: ignore[arg-type]
        size_ms=size,
        slide_ms=draw(st.sampled_from([d for d in (5, 10, 15, 30) if size % d == 0])),
        gap_ms=draw(st.sampled_from([5, 20])),
        allowed_lateness_ms=draw(st.sampled_from([0, 10, 40])),
        out_of_orderness_ms=draw(st.sampled_from([0, 5, 20])),
        idle_timeout_ms=draw(st.sampled_from([None, 50])),
        quantiles=draw(st.booleans()),
    )


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    """Out-of-order records (trend + jitter, some far behind) cut into batches and ticks."""
    n = draw(st.integers(0, 60))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c", "é"]), min_size=1, max_size=3))
    grain = draw(st.sampled_from([1, 5]))  # coarse times: ties and exact boundaries
    events = []
    for i in range(n):
        jitter = (
            draw(st.integers(-25, 25)) if draw(st.integers(0, 9)) else -draw(st.integers(0, 300))
        )
        ts = (draw(st.sampled_from([0, 1000])) + i * 3 + jitter) // grain * grain
        value = float(draw(st.integers(-50, 50)))
        pos = Position(10**30 + i // 3, i % 3)  # > 64 bit, sub-sequences like KPL
        events.append(
            Event((draw(st.sampled_from(keys)), "m"), ts, value, RawRecord(b"", "pk", pos, 0))
        )
    steps: list[Step] = []
    now, i = 0, 0
    while i < n or draw(st.booleans()):
        now += draw(st.integers(0, 80))
        if i < n and draw(st.integers(0, 4)):
            k = draw(st.integers(1, 12))
            steps.append((events[i : i + k], now))
            i += k
        else:
            steps.append(([], now))
    return steps


@dataclass
class Group:
    start: int
    end: int
    key: tuple[str, ...]
    rows: list[Event] = field(default_factory=list)
    emitted: bool = False
    final: bool = False
    changed: bool = True

    def agg(self) -> tuple[int, float, float, float, int, int]:
        vs = [e.value for e in self.rows]
        ts = [e.ts_ms for e in self.rows]
        return (len(vs), sum(vs), min(vs), max(vs), min(ts), max(ts))


@dataclass
class Oracle:
    spec: WindowSpec
    max_ts: int = NEG
    wm: int = NEG
    last_now: int | None = None
    groups: list[Group] = field(default_factory=list)

    def _aligned(self, ev: Event) -> bool:
        s, sl, lat = (
            self.spec.size_ms,
            self.spec.slide_ms or self.spec.size_ms,
            self.spec.allowed_lateness_ms,
        )
        if self.spec.kind == "tumbling":
            sl = s
        starts = [w for w in range(ev.ts_ms - s + 1, ev.ts_ms + 1) if w % sl == 0]
        ok = [w for w in starts if w + s + lat > self.wm]
        for w in ok:
            g = next((g for g in self.groups if (g.start, g.key) == (w, ev.key)), None)
            if g is None:
                g = Group(w, w + s, ev.key)
                self.groups.append(g)
            g.rows.append(ev)
            g.changed = True
        return bool(ok)

    def _session(self, ev: Event) -> bool:
        gap, lat = self.spec.gap_ms or 0, self.spec.allowed_lateness_ms
        mine = [g for g in self.groups if g.key == ev.key]
        hits = [g for g in mine if g.start < ev.ts_ms + gap and ev.ts_ms < g.end]
        if ev.ts_ms < self.wm - lat:  # sessions judge lateness by the record's own time
            return False
        assert not any(g.end + lat <= self.wm for g in hits), "accepted record hit a final session"
        rows = [ev] + [r for g in hits for r in g.rows]
        for g in hits:
            self.groups.remove(g)
        ts = [r.ts_ms for r in rows]
        self.groups.append(Group(min(ts), max(ts) + gap, ev.key, rows))
        return True

    def step(
        self, events: list[Event], now: int, close: bool = False
    ) -> tuple[dict[str, tuple[object, bool]], list[Position]]:
        late = []
        if events:
            self.last_now = now
            for ev in events:
                ok = self._session(ev) if self.spec.kind == "session" else self._aligned(ev)
                if not ok:
                    late.append(ev.record.position)
                if ev.ts_ms > self.max_ts:
                    self.max_ts = ev.ts_ms
                    self.wm = max(self.wm, ev.ts_ms - self.spec.out_of_orderness_ms)
        elif (
            not close
            and self.spec.idle_timeout_ms
            and self.last_now is not None
            and self.max_ts > NEG
        ):
            idle = now - self.last_now
            if idle >= self.spec.idle_timeout_ms:
                adv = self.max_ts - self.spec.out_of_orderness_ms + idle - self.spec.idle_timeout_ms
                self.wm = max(self.wm, adv)
        return self._emit(close), late

    def _emit(self, close: bool) -> dict[str, tuple[object, bool]]:
        out: dict[str, tuple[object, bool]] = {}
        lat = self.spec.allowed_lateness_ms
        for g in self.groups:
            if g.final:
                continue
            final = close or g.end + lat <= self.wm
            if self.spec.kind == "session":
                due = final
            else:
                due = final or (g.end <= self.wm and (not g.emitted or g.changed))
            if due:
                out[result_id(self.spec.kind, g.start, g.end, g.key, SHARD)] = (g.agg(), final)
                g.emitted, g.final, g.changed = True, final, False
        return out


def as_dict(out: StepOutput) -> dict[str, tuple[object, bool]]:
    d: dict[str, tuple[object, bool]] = {}
    for r in out.results:
        a = r.aggregates
        assert r.result_id not in d, "one result id emitted twice in one step"
        assert r.shard_id == SHARD and r.kind in ("tumbling", "sliding", "session")
        d[r.result_id] = ((a.count, a.sum, a.min, a.max, a.first_ts_ms, a.last_ts_ms), r.is_final)
        if a.sketch is not None:  # the sketch holds exactly the window's values
            sk = QuantileSketch.from_bytes(a.sketch)
            assert sk.count == a.count
            assert sk.quantile(0.0) == pytest.approx(a.min, rel=0.02)
            assert sk.quantile(1.0) == pytest.approx(a.max, rel=0.02)
    return d


def late_positions(late: list[Rejected]) -> list[Position]:
    assert all((r.stage, r.reason) == ("window", "late") for r in late)
    return [r.record.position for r in late]


@settings(max_examples=400, deadline=None)
@given(specs(), streams())
def test_engine_matches_oracle_step_by_step(spec: WindowSpec, steps: list[Step]) -> None:
    eng, oracle = WindowEngine(spec, SHARD), Oracle(spec)
    finals: set[str] = set()
    for events, now in steps:
        out = eng.process(events, now) if events else eng.tick(now)
        want, want_late = oracle.step(events, now)
        got = as_dict(out)
        assert got == want
        assert late_positions(out.late) == want_late
        assert eng.watermark_ms == (None if oracle.wm == NEG else oracle.wm)
        assert not finals & got.keys(), "emission after is_final"
        finals |= {rid for rid, (_, final) in got.items() if final}
    out = eng.close_all()
    want, _ = oracle.step([], 0, close=True)
    assert as_dict(out) == want
    assert all(final for _, final in want.values())
    assert eng.open_windows == 0
    # Every group the batch oracle built was delivered, as final, exactly once.
    assert finals | set(want) == {
        result_id(spec.kind, g.start, g.end, g.key, SHARD) for g in oracle.groups
    }


@settings(max_examples=120, deadline=None)
@given(specs(), streams(), st.data())
def test_snapshot_restore_midstream_then_replay_is_invisible(
    spec: WindowSpec, steps: list[Step], data: st.DataObject
) -> None:
    whole = WindowEngine(spec, SHARD)
    ref = [whole.process(ev, now) if ev else whole.tick(now) for ev, now in steps]
    ref.append(whole.close_all())
    k = data.draw(st.integers(0, len(steps)))
    eng = WindowEngine(spec, SHARD)
    for ev, now in steps[:k]:
        eng.process(ev, now) if ev else eng.tick(now)
    eng = WindowEngine.restore(eng.snapshot())
    seen = [e for ev, _ in steps[:k] for e in ev]
    # KCL replays from the checkpoint: some suffix of what was already processed.
    replay = seen[data.draw(st.integers(0, len(seen))) :]
    if replay:
        again = eng.process(replay, steps[k - 1][1])
        assert again.results == [] and again.late == []
        assert eng.replayed_skipped == len(replay)
    got = [eng.process(ev, now) if ev else eng.tick(now) for ev, now in steps[k:]]
    got.append(eng.close_all())
    assert got == ref[k:]


