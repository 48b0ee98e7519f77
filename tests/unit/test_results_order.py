"""Results objects hold many windows: the order they rest on, and cutting them (hypothesis).

1. The engine's final results come out in one total window order, for every window kind: each
   step's finals, sorted by (end, start, key), come after every earlier step's, and the whole
   sequence is the same whatever the batch cuts and across a snapshot/restore mid-stream.
2. Cutting by window order (layout.cut_ranges over layout.window_orders) with the manifest's
   rules: a first writer reserves and writes objects, dies at any object; a second replays
   from the last checkpoint with other drain boundaries, holds the results until it is past
   the last reserved window, and repeats the reserved objects. Every final result is then in
   exactly one object, and a key written twice has the same content both times.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.pipeline import final_in_order
from consumer.records.model import Event, Position, RawRecord
from consumer.sinks.layout import (
    HOUR_MS,
    Reserved,
    WindowOrder,
    cut_ranges,
    plan_objects,
    results_key,
    window_orders,
)
from consumer.windows.engine import WindowEngine
from consumer.windows.model import Aggregates, WindowResult, WindowSpec

SHARD = "shardId-000000000003"


@st.composite
def specs(draw: st.DrawFn) -> WindowSpec:
    kind = draw(st.sampled_from(["tumbling", "sliding", "session"]))
    return WindowSpec(
        kind=kind, size_ms=draw(st.sampled_from([10, 30])),  # type: ignore[arg-type]
        slide_ms=draw(st.sampled_from([5, 10])), gap_ms=draw(st.sampled_from([4, 15])),
        allowed_lateness_ms=draw(st.sampled_from([0, 10, 40])),
        out_of_orderness_ms=draw(st.sampled_from([0, 5, 20])),
        quantiles=draw(st.booleans()))


@st.composite
def events(draw: st.DrawFn) -> list[Event]:
    n = draw(st.integers(0, 70))
    keys = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3))
    out = []
    for i in range(n):
        behind = draw(st.integers(0, 5)) == 0  # now and then far behind: late
        jitter = -draw(st.integers(0, 200)) if behind else draw(st.integers(-30, 10))
        ts = i * 3 + jitter
        out.append(Event((draw(st.sampled_from(keys)), "m"), ts, float(draw(st.integers(0, 9))),
                         RawRecord(b"", "pk", Position(10**25 + i, 0), 0)))
    return out


def cut_into(items: list[Event], sizes: list[int]) -> list[list[Event]]:
    out, lo, i = [], 0, 0
    while lo < len(items):
        size = sizes[i % len(sizes)]
        out.append(items[lo:lo + size])
        lo, i = lo + size, i + 1
    return out


def run(engine: WindowEngine, batches: list[list[Event]], ticks: bool = False,
        close: bool = False) -> list[list[WindowResult]]:
    """Each step's final results in window order (ticks: an idle tick after each batch)."""
    steps, now = [], 0
    for batch in batches:
        now += 1_000
        steps.append(final_in_order(engine.process(batch, now).results))
        if ticks:
            now += 10_000
            steps.append(final_in_order(engine.tick(now).results))
    if close:
        steps.append(final_in_order(engine.close_all().results))
    return steps


def content(steps: list[list[WindowResult]]) -> list[tuple[str, Aggregates]]:
    return [(r.result_id, r.aggregates) for step in steps for r in step]


@settings(max_examples=80, deadline=None)
@given(spec=specs(), evs=events(), cuts_a=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       cuts_b=st.lists(st.integers(1, 13), min_size=1, max_size=4), ticks=st.booleans(),
       restore_after=st.integers(0, 6))
def test_final_results_come_in_one_total_window_order(
        spec: WindowSpec, evs: list[Event], cuts_a: list[int], cuts_b: list[int], ticks: bool,
        restore_after: int) -> None:
    idle = WindowSpec(**{**{f: getattr(spec, f) for f in spec.__slots__},  # type: ignore[attr-defined]
                         "idle_timeout_ms": 1}) if ticks else spec
    seen: list[tuple[int, int]] = []
    for step in run(WindowEngine(idle, SHARD), cut_into(evs, cuts_a), ticks, close=True):
        windows = [(r.end_ms, r.start_ms) for r in step]
        assert windows == sorted(windows)
        if windows and seen:
            assert windows[0] > seen[-1]  # strictly later than every earlier step's finals
        seen += windows
    # Without idle ticks (processing time), the sequence is a function of the records alone.
    a = run(WindowEngine(spec, SHARD), cut_into(evs, cuts_a), close=True)
    first = WindowEngine(spec, SHARD)
    batches_b = cut_into(evs, cuts_b)
    head = run(first, batches_b[:restore_after])
    done = sum(map(len, batches_b[:restore_after]))
    restored = WindowEngine.restore(first.snapshot())
    b = head + run(restored, cut_into(evs[done:], cuts_a[::-1]), close=True)
    assert content(a) == content(b)


# ---------------------------------------------------------------- cutting by window order

Window = tuple[int, int, int]  # end, start, keys


@st.composite
def window_steps(draw: st.DrawFn) -> list[list[Window]]:
    """Engine steps of final windows in window order; starts spread over a few hours
    (sessions: a later end can have an earlier start)."""
    n = draw(st.integers(1, 25))
    ends = sorted(set(draw(st.lists(st.integers(1, 40), min_size=n, max_size=n))))
    by_end: list[list[Window]] = []
    for e in ends:
        back = set(draw(st.lists(st.integers(0, 6), min_size=1, max_size=2)))
        by_end.append(sorted((e * HOUR_MS // 8, e * HOUR_MS // 8 - b * HOUR_MS // 4,
                              draw(st.integers(1, 4))) for b in back))
    # One window end finalizes in one step (the watermark passes end + lateness at once).
    bounds = sorted(set(draw(st.lists(st.integers(1, len(by_end)), max_size=8))))
    return [[w for ws in by_end[lo:hi] for w in ws]
            for lo, hi in zip([0, *bounds], [*bounds, len(by_end)], strict=True) if lo < hi]


def finals(step: list[Window]) -> list[WindowResult]:
    out = [WindowResult("session", s, e, (f"k{i}",), SHARD,
                        Aggregates(i + 1, 1.0, 1.0, 1.0, s, s), True)
           for e, s, keys in step for i in range(keys)]
    return final_in_order(out)


class Writer:
    """One tenure: a buffer, the shard's manifest and bucket (shared, as in S3)."""

    def __init__(self, manifest: list[Reserved[WindowOrder]], bucket: dict[str, list[str]],
                 max_records: int) -> None:
        self.manifest, self.bucket, self.max_records = manifest, bucket, max_records
        self.buffer: list[WindowResult] = []
        self.durable: tuple[int, int] | None = None  # newest window durable at a checkpoint
        self.newest: tuple[int, int] | None = None  # newest window written

    def commit(self) -> bool:
        """Drain; checkpoint (covering what it wrote) if nothing waits."""
        if not self.drain() or self.buffer:
            return False
        self.durable = self.newest
        return True

    def drain(self, crash_after: int | None = None) -> bool:
        """Reserve and write what is buffered, unless the replay has not passed the last
        reserved window; False if it crashed (after crash_after objects)."""
        if not self.buffer:
            return True
        newest = (self.buffer[-1].end_ms, self.buffer[-1].start_ms)
        if self.manifest and newest < max((r.last.end_ms, r.last.start_ms)
                                          for r in self.manifest):
            return True  # held: still replaying up to objects reserved before us
        results, self.buffer = self.buffer, []
        self.newest = newest
        lines = [r.key[0] + f"@{r.end_ms}/{r.start_ms}" for r in results]
        plans = plan_objects(window_orders(results), [r.start_ms for r in results],
                             [x.encode() for x in lines], "res/", SHARD)
        objects = [o for plan in plans for o in cut_ranges(
            plan, self.manifest, lambda pre, f, la: results_key(pre, "session", f, la),
            self.max_records)]
        self.manifest[:] = [r for r in self.manifest if self.durable is None
                            or (r.last.end_ms, r.last.start_ms) > self.durable]
        known = {r.key for r in self.manifest}
        self.manifest += [Reserved(k, o.positions[0], o.positions[-1]) for k, o in objects
                          if k not in known]
        for i, (key, obj) in enumerate(objects):
            if crash_after is not None and i >= crash_after:
                return False
            body = [line.decode() for line in obj.lines]
            assert self.bucket.setdefault(key, body) == body  # If-None-Match: same content
        return True


@settings(max_examples=300, deadline=None)
@given(steps=window_steps(), data=st.data(), max_records=st.integers(1, 6))
def test_a_new_writer_repeats_reserved_results_objects_exactly(
        steps: list[list[Window]], data: st.DataObject, max_records: int) -> None:
    manifest: list[Reserved[WindowOrder]] = []
    bucket: dict[str, list[str]] = {}
    a = Writer(manifest, bucket, max_records)
    commits_a = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    crash_step = data.draw(st.integers(0, len(steps)))
    crash_after = data.draw(st.integers(0, 3))
    checkpoint = 0  # steps a's last checkpoint covers (its snapshot has them final)
    for i, (step, commit) in enumerate(zip(steps, commits_a, strict=True)):
        a.buffer += finals(step)
        if i == crash_step:
            a.drain(crash_after)
            break
        if commit and a.commit():
            checkpoint = i + 1
    # The new owner restores the checkpoint's snapshot and replays the steps after it, with
    # other commit points (a batch cut elsewhere).
    b = Writer(manifest, bucket, max_records)
    commits_b = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    for step, commit in zip(steps[checkpoint:], commits_b, strict=False):
        b.buffer += finals(step)
        if commit:
            b.commit()
    assert b.commit() and not b.buffer
    rows = [line for body in bucket.values() for line in body]
    want = [r.key[0] + f"@{r.end_ms}/{r.start_ms}" for s in steps for r in finals(s)]
    assert sorted(rows) == sorted(want)  # each final result once: none missing, none twice


def test_results_keys_sort_in_window_order() -> None:
    orders = [WindowOrder(10_000, 0, 3), WindowOrder(10_000, 5_000, 0), WindowOrder(20_000, 0, 0),
              WindowOrder(1_795_000_000_000, 1_794_999_990_000, 12)]
    keys = [results_key("r/", "tumbling", o, o) for o in orders]
    assert keys == sorted(keys)
    token = "0000000010000-0000000000000-000003"
    assert keys[0] == f"r/tumbling-{token}_{token}.ndjson.gz"


def plain_window_orders(results: list[WindowResult]) -> list[WindowOrder]:
    """The reference: one pass, ranking each result after the previous one in its window."""
    out, prev, rank = [], None, 0
    for r in results:
        rank = rank + 1 if (r.end_ms, r.start_ms) == prev else 0
        prev = (r.end_ms, r.start_ms)
        out.append(WindowOrder(r.end_ms, r.start_ms, rank))
    return out


@settings(max_examples=200, deadline=None)
@given(steps=window_steps())
def test_window_orders_rank_as_the_plain_pass_does(steps: list[list[Window]]) -> None:
    results = [r for step in steps for r in finals(step)]
    orders = window_orders(results)
    assert orders == plain_window_orders(results)
    assert all(type(o) is WindowOrder for o in orders)
