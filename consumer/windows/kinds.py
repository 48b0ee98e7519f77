"""Window kinds over in-memory state: aligned (tumbling, sliding) and session windows.

State per (window, key) is a plain list, the "agg":
    [count, sum, min, max, first_ts, last_ts, q]
where q (only with quantiles) is a list of raw values, folded into a QuantileSketch once it
passes RAW_LIMIT. Sessions append their own fields (see _Sessions). Plain lists, no objects
per record: the hot loops only index and compare. Exception: tumbling windows without
quantiles keep each group's state as the immutable Aggregates its result carries, replaced
on every further record. Most groups of a sparse stream get one record; its state is then
built in C (Aligned.add_columns), is one allocation outside the cyclic GC, and is emitted
as is, with no copy.

`add` assigns events to windows and returns the ones that were too late for every window
they belong to; `collect` emits results as the watermark allows. Both are driven by
WindowEngine, which owns the watermark; these classes only read and advance it per record.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from itertools import repeat, starmap
from operator import attrgetter
from typing import Any

from msgspec.structs import astuple

from consumer.records.model import Event, Position
from consumer.windows.model import Aggregates, WindowResult, WindowSpec
from consumer.windows.sketch import RAW_LIMIT, QuantileSketch, sketch_bytes

Key = tuple[str, ...]
Agg = list[Any]
Late = list[tuple[Event, int]]  # (event, watermark when it arrived)
NEG_INF = -(2**62)
BYTES_PER_GROUP = 260  # calibrated with tracemalloc by consumer.bench.windows
BYTES_PER_GROUP_COLUMNAR = 350  # the same, for add_columns' groups (keys not interned)
BYTES_PER_RAW_VALUE = 32
BYTES_PER_RAW_LIST = 72
BYTES_PER_BIN = 100
KEY_CACHE_CAP = 1 << 20
_KEY, _TS, _VALUE = attrgetter("key"), attrgetter("ts_ms"), attrgetter("value")
LATE_BLOCK = 256  # records per block of add_columns' lateness check


def _six(a: Any) -> Any:
    """count, sum, min, max, first_ts, last_ts of a list or Aggregates row."""
    return a[:6] if type(a) is list else astuple(a)[:6]


def _add_q(agg: Agg, v: float, accuracy: float) -> None:
    q = agg[6]
    if type(q) is list:
        q.append(v)
        if len(q) > RAW_LIMIT:
            agg[6] = QuantileSketch(accuracy).add_all(q)
    else:
        q.add(v)


def _merge_q(a: Any, b: Any, accuracy: float) -> Any:
    """Merge two q slots (raw list or sketch) into one."""
    if type(a) is list and type(b) is list and len(a) + len(b) <= RAW_LIMIT:
        return a + b
    sa = a if isinstance(a, QuantileSketch) else QuantileSketch(accuracy).add_all(a)
    sb = b if isinstance(b, QuantileSketch) else QuantileSketch(accuracy).add_all(b)
    sa.merge(sb)
    return sa


def _sketch_bytes(q: Any, accuracy: float) -> bytes:
    return q.to_bytes() if isinstance(q, QuantileSketch) else sketch_bytes(q, accuracy)


def _q_bytes(q: Any) -> int:
    if isinstance(q, QuantileSketch):
        return BYTES_PER_BIN * (len(q.pos) + len(q.neg))
    return BYTES_PER_RAW_LIST + BYTES_PER_RAW_VALUE * len(q)


class _Base:
    """Shared configuration and result building."""

    def __init__(self, spec: WindowSpec, shard_id: str) -> None:
        self.spec = spec
        self.shard_id = shard_id
        self.aggregation = ""  # the results' (WindowEngine sets it for a declared one)
        self.kind = spec.kind
        self.lateness = spec.allowed_lateness_ms
        self.ooo = spec.out_of_orderness_ms
        self.quantiles = spec.quantiles
        self.accuracy = spec.quantile_accuracy
        # Interned key tuples: equal keys across windows share one tuple and its strings.
        self.keys: dict[Key, Key] = {}
        self.tumbling = False  # state is Aggregates, not lists (see Aligned)

    def _results(
        self, start: int, end: int, groups: dict[Key, Any], final: bool
    ) -> list[WindowResult]:
        if self.quantiles:
            return [self._result(start, end, k, a, final) for k, a in groups.items()]
        n = len(groups)
        # Tumbling without sketches keeps Aggregates as state; else the lists become them.
        aggs = groups.values() if self.tumbling else starmap(Aggregates, groups.values())
        # The constructors are mapped in C: no bytecode per result.
        return list(
            map(
                WindowResult,
                repeat(self.kind, n),
                repeat(start, n),
                repeat(end, n),
                groups.keys(),
                repeat(self.shard_id, n),
                aggs,
                repeat(final, n),
                repeat(self.aggregation, n),
            )
        )

    def _result(self, start: int, end: int, key: Key, a: Agg, final: bool) -> WindowResult:
        sketch = _sketch_bytes(a[6], self.accuracy) if self.quantiles else None
        aggs = Aggregates(a[0], a[1], a[2], a[3], a[4], a[5], sketch)
        return WindowResult(self.kind, start, end, key, self.shard_id, aggs, final,
                            self.aggregation)

    def _trim_key_cache(self) -> None:
        if len(self.keys) > KEY_CACHE_CAP:
            self.keys.clear()


class Aligned(_Base):
    """Tumbling (slide == size) and sliding windows, aligned to the epoch.

    State: buckets[start][key] -> agg. A bucket (one window start) is emitted the first time
    the watermark reaches its end; while end + lateness > watermark, late records update it
    and only the updated keys are re-emitted; at end + lateness <= watermark every key is
    emitted once more with is_final=True and the bucket is freed.
    """

    def __init__(self, spec: WindowSpec, shard_id: str) -> None:
        super().__init__(spec, shard_id)
        self.size = spec.size_ms
        self.slide = spec.slide_ms if spec.kind == "sliding" and spec.slide_ms else spec.size_ms
        # Tumbling without sketches: a group's state is its (immutable) Aggregates.
        self.tumbling = self.slide == self.size and not self.quantiles
        # A group's state: a list (see the module docstring), or Aggregates if tumbling.
        self.buckets: dict[int, dict[Key, Any]] = {}
        self.dirty: dict[int, set[Key]] = {}  # only for buckets already emitted

    def add(self, events: Sequence[Event], max_ts: int, wm: int) -> tuple[int, int, Late]:
        if self.tumbling:
            cols = list(map(_KEY, events)), list(map(_TS, events)), list(map(_VALUE, events))
            return self.add_columns(*cols, events, max_ts, wm)
        return self._add_general(events, max_ts, wm)

    @property
    def columnar(self) -> bool:
        """add_columns applies: tumbling windows without quantile sketches."""
        return self.tumbling

    def add_columns(
        self,
        keys: list[Key],
        ts: list[int],
        values: list[float],
        events: Sequence[Event],
        max_ts: int,
        wm: int,
    ) -> tuple[int, int, Late]:
        """add for tumbling windows without quantiles, over parallel columns (record i:
        keys[i], ts[i], values[i], and events[i], the same as an Event; non-empty).

        Few Python steps per record: window starts and lateness are computed per block of
        records, new groups are built in C, and the loop over records is one dict lookup
        for most of them (see the module docstring)."""
        size, ooo = self.size, self.ooo
        starts = [t - t % size for t in ts]
        hi = max(ts)
        late_at = self._late_columns(ts, starts, max_ts, wm)
        late: Late = [(events[i], w) for i, w in late_at]
        if late_at:
            gone = {i for i, _ in late_at}
            idx = [i for i in range(len(ts)) if i not in gone]
            keys = [keys[i] for i in idx]
            ts = [ts[i] for i in idx]
            values = [values[i] for i in idx]
            starts = [starts[i] for i in idx]
        buckets = self.buckets
        new_starts: list[int] = []
        cur_start = None
        bucket: dict[Key, Any] = {}
        setdefault: Any = bucket.setdefault
        # A group's aggregates are the immutable Aggregates the results carry: a new group
        # (most groups of a sparse stream get one record) goes in with one hash lookup,
        # built in C here; another record replaces them.
        rows = map(Aggregates, repeat(1), values, values, values, ts, ts)
        for key, start, row in zip(keys, starts, rows):  # noqa: B905 (equal lengths)
            if start != cur_start:
                cur_start = start
                found = buckets.get(start)
                if found is None:
                    buckets[start] = bucket = {}
                    new_starts.append(start)
                else:
                    bucket = found
                setdefault = bucket.setdefault
            a = setdefault(key, row)
            if a is not row:
                v, t = row.sum, row.first_ts_ms
                bucket[key] = Aggregates(
                    a.count + 1,
                    a.sum + v,
                    v if v < a.min else a.min,
                    v if v > a.max else a.max,
                    t if t < a.first_ts_ms else a.first_ts_ms,
                    t if t > a.last_ts_ms else a.last_ts_ms,
                )
        dirty = self.dirty  # windows already emitted: note the keys to emit again
        if dirty and not dirty.keys().isdisjoint(starts):
            for key, start in zip(keys, starts):  # noqa: B905
                d = dirty.get(start)
                if d is not None:
                    d.add(key)
        # The watermark moves per record: after the batch it is this.
        return max(max_ts, hi), max(wm, hi - ooo) if hi > max_ts else wm, late

    def _late_columns(
        self, ts: list[int], starts: list[int], max_ts: int, wm: int
    ) -> list[tuple[int, int]]:
        """(i, watermark it met) of each record that is late, in order.

        Record i meets W_i = max(wm, max(max_ts, ts[:i]) - ooo) (wm >= max_ts - ooo holds
        throughout) and is late iff starts[i] <= W_i - size - lateness. W only grows, so a
        block of records none of which is late even against the watermark after the block
        needs no per-record look; only a block that might holds one goes record by record.
        """
        size, ooo, lateness = self.size, self.ooo, self.lateness
        late: list[tuple[int, int]] = []
        m = max_ts  # largest event time before the block
        for b in range(0, len(ts), LATE_BLOCK):
            block = ts[b : b + LATE_BLOCK]
            top = max(m, max(block))
            if min(starts[b : b + LATE_BLOCK]) <= max(wm, top - ooo) - size - lateness:
                w = max(wm, m - ooo)
                for i, t in enumerate(block, b):
                    if starts[i] <= w - size - lateness:
                        late.append((i, w))
                    if t > m:
                        m = t
                        w = max(w, t - ooo)
            m = top
        return late

    def _add_general(self, events: Sequence[Event], max_ts: int, wm: int) -> tuple[int, int, Late]:
        size, slide, ooo, lateness = self.size, self.slide, self.ooo, self.lateness
        buckets, keys, dirty = self.buckets, self.keys, self.dirty
        quantiles, accuracy = self.quantiles, self.accuracy
        late: Late = []
        late_cut = wm - size - lateness
        for ev in events:
            ts = ev.ts_ms
            last = ts - ts % slide
            lo = last - size + slide
            if lo <= late_cut:  # skip the windows already past end + lateness
                lo = late_cut - late_cut % slide + slide
                if lo > last:
                    late.append((ev, wm))
                    max_ts = max(max_ts, ts)
                    continue
            key = keys.get(ev.key)
            if key is None:
                keys[ev.key] = key = ev.key
            v = ev.value
            for start in range(lo, last + 1, slide):
                bucket = buckets.get(start)
                if bucket is None:
                    bucket = buckets[start] = {}
                a = bucket.get(key)
                if a is None:
                    bucket[key] = a = [1, v, v, v, ts, ts]
                    if quantiles:
                        a.append([v])
                else:
                    a[0] += 1
                    a[1] += v
                    a[2] = min(a[2], v)
                    a[3] = max(a[3], v)
                    a[4] = min(a[4], ts)
                    a[5] = max(a[5], ts)
                    if quantiles:
                        _add_q(a, v, accuracy)
                d = dirty.get(start)
                if d is not None:
                    d.add(key)
            if ts > max_ts:
                max_ts = ts
                if ts - ooo > wm:
                    wm = ts - ooo
                    late_cut = wm - size - lateness
        return max_ts, wm, late

    def collect(self, wm: int, everything: bool) -> list[WindowResult]:
        """Emit what the watermark allows (everything=True: all, final; shard end)."""
        out: list[WindowResult] = []
        size, lateness = self.size, self.lateness
        for start in sorted(self.buckets):
            end = start + size
            if not everything and end > wm:
                break
            bucket = self.buckets[start]
            d = self.dirty.get(start)
            if everything or end + lateness <= wm:
                out += self._results(start, end, bucket, True)
                del self.buckets[start]
                self.dirty.pop(start, None)
            elif d is None:  # first emission of this window
                out += self._results(start, end, bucket, False)
                self.dirty[start] = set()
            elif d:  # late records updated these keys since the last emission
                out += self._results(start, end, {k: bucket[k] for k in sorted(d)}, False)
                d.clear()
        self._trim_key_cache()
        return out

    @property
    def open_groups(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def state_bytes(self) -> int:
        per_group = BYTES_PER_GROUP_COLUMNAR if self.columnar else BYTES_PER_GROUP
        n = self.open_groups * per_group
        if self.quantiles:
            n += sum(_q_bytes(a[6]) for b in self.buckets.values() for a in b.values())
        return n

    def to_state(self) -> list[Any]:
        q = self.quantiles
        return [
            [
                start,
                None,  # was the bucket's first position (snapshot version 1 kept it)
                start in self.dirty,
                sorted(self.dirty.get(start, ())),
                [[k, *_six(a), *([_snap_q(a[6])] if q else [])] for k, a in b.items()],
            ]
            for start, b in self.buckets.items()
        ]

    def load_state(self, state: list[Any]) -> None:
        for start, _, emitted, dirty_keys, groups in state:
            bucket = self.buckets[start] = {}
            if emitted:
                self.dirty[start] = {tuple(k) for k in dirty_keys}
            for g in groups:
                a = g[1:7]
                if self.quantiles:
                    a.append(_load_q(g[7]))
                bucket[tuple(g[0])] = Aggregates(*a) if self.tumbling else a


def snap_pos(p: Position) -> list[Any]:
    return [str(p.sequence), p.sub_sequence]  # sequence numbers exceed 64-bit msgpack ints


def load_pos(p: list[Any]) -> Position:
    return Position(int(p[0]), int(p[1]))


def _snap_q(q: Any) -> Any:
    return q.to_bytes() if isinstance(q, QuantileSketch) else q


def _load_q(q: Any) -> Any:
    return QuantileSketch.from_bytes(q) if isinstance(q, bytes) else list(q)


class Sessions(_Base):
    """Session windows per key: [first_ts, last_ts + gap), merged when they overlap.

    A session is emitted once, with is_final=True, when end + lateness <= watermark (or at
    shard end). Why not earlier: a late record can extend or merge a session, which changes
    its start/end and so its result_id; emitting only final results keeps ids stable.
    A record is late (side output) iff ts < watermark - lateness: its OWN time, not its
    window's end as for tumbling/sliding. Why: a record can only touch a session with
    end > ts, and a final session has end <= watermark - lateness, so an accepted record can
    never change a session that was emitted, and no memory of freed sessions is needed
    (a window-end rule would need one entry per key ever closed: a still-open session can be
    extended backwards record by record until a late record bridges it to a freed one).

    Session agg: [count, sum, min, max, first_ts, last_ts, q].
    """

    def __init__(self, spec: WindowSpec, shard_id: str) -> None:
        super().__init__(spec, shard_id)
        assert spec.gap_ms is not None
        self.gap = spec.gap_ms
        self.sessions: dict[Key, list[Agg]] = {}  # per key, disjoint, sorted by first_ts
        self.heap: list[tuple[int, Key]] = []  # (end + lateness, key), lazily invalidated
        self.sched: dict[Key, int] = {}  # key -> deadline of its live heap entry

    def _schedule(self, key: Key, deadline: int) -> None:
        cur = self.sched.get(key)
        if cur is None or deadline < cur:
            self.sched[key] = deadline
            heapq.heappush(self.heap, (deadline, key))

    def add(self, events: Sequence[Event], max_ts: int, wm: int) -> tuple[int, int, Late]:
        late: Late = []
        for ev in events:
            if not self._add_one(ev, wm):
                late.append((ev, wm))
            ts = ev.ts_ms
            if ts > max_ts:
                max_ts = ts
                wm = max(wm, ts - self.ooo)
        return max_ts, wm, late

    def _add_one(self, ev: Event, wm: int) -> bool:
        gap, lateness = self.gap, self.lateness
        key, ts, v = ev.key, ev.ts_ms, ev.value
        if ts < wm - lateness:
            return False
        ss = self.sessions.get(key)
        # Overlapping sessions; none of them can be final (see the class docstring).
        hits = [s for s in ss if s[4] < ts + gap and ts < s[5] + gap] if ss else []
        if not hits:
            k = self.keys.get(key)
            if k is None:
                self.keys[key] = k = key
            new = [1, v, v, v, ts, ts, [v] if self.quantiles else None]
            ss = self.sessions.setdefault(k, [])
            ss.append(new)
            ss.sort(key=lambda s: s[4])
            self._schedule(k, ts + gap + lateness)
            return True
        a = hits[0]
        for b in hits[1:]:  # the record bridges several sessions: fold them into the first
            self._fold(a, b)
            assert ss is not None
            ss.remove(b)
        a[0] += 1
        a[1] += v
        a[2], a[3] = min(a[2], v), max(a[3], v)
        a[4], a[5] = min(a[4], ts), max(a[5], ts)
        if self.quantiles:
            _add_q(a, v, self.accuracy)
        return True

    def _fold(self, a: Agg, b: Agg) -> None:
        a[0] += b[0]
        a[1] += b[1]
        a[2], a[3] = min(a[2], b[2]), max(a[3], b[3])
        a[4], a[5] = min(a[4], b[4]), max(a[5], b[5])
        if self.quantiles:
            a[6] = _merge_q(a[6], b[6], self.accuracy)

    def collect(self, wm: int, everything: bool) -> list[WindowResult]:
        out: list[WindowResult] = []
        gap, lateness = self.gap, self.lateness
        if everything:
            for key in sorted(self.sessions):
                out.extend(self._result(s[4], s[5] + gap, key, s, True) for s in self.sessions[key])
            self.sessions.clear()
            self.heap.clear()
            self.sched.clear()
            return out
        heap = self.heap
        while heap and heap[0][0] <= wm:
            deadline, key = heapq.heappop(heap)
            if self.sched.get(key) != deadline:
                continue  # stale entry: superseded by an earlier deadline
            del self.sched[key]
            keep = []
            for s in self.sessions.pop(key):
                end = s[5] + gap
                if end + lateness <= wm:
                    out.append(self._result(s[4], end, key, s, True))
                else:
                    keep.append(s)
            if keep:
                self.sessions[key] = keep
                self._schedule(key, min(s[5] for s in keep) + gap + lateness)
        self._trim_key_cache()
        # Heap pop order depends on stale entries; a restored engine has none. Sort so the
        # output does not depend on history.
        out.sort(key=lambda r: (r.end_ms, r.start_ms, r.key))
        return out

    @property
    def open_groups(self) -> int:
        return sum(len(ss) for ss in self.sessions.values())

    def state_bytes(self) -> int:
        n = self.open_groups * BYTES_PER_GROUP
        if self.quantiles:
            n += sum(_q_bytes(s[6]) for ss in self.sessions.values() for s in ss)
        return n

    def to_state(self) -> list[Any]:
        sessions = [
            [k, [[*s[:6], _snap_q(s[6]) if self.quantiles else None, None] for s in ss]]
            for k, ss in self.sessions.items()
        ]
        return sessions

    def load_state(self, state: list[Any]) -> None:
        for k, ss in state:
            key = tuple(k)
            rows = []
            for s in ss:
                q = _load_q(s[6]) if self.quantiles else None
                rows.append([*s[:6], q])
            self.sessions[key] = rows
            self._schedule(key, min(r[5] for r in rows) + self.gap + self.lateness)
