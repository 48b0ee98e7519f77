"""Several aggregations over one shard's stream: one WindowEngine per declared aggregation.

Pure. An `Aggregation` reads its own Event of each record from the record's fields (the
decoded JSON object, or the transform chain's output): its key from its group-by paths, its
value from its measure field, its event time from the contract's. The engine then does what
it does for the default aggregation (count, sum, min, max, mean and, with quantiles, a
sketch), with the aggregation's own window, lateness and out-of-orderness, so its watermark,
late records and snapshot are its own.

A record that a route step (consumer/transform/steps.py) sent to other aggregations only,
a record an aggregation cannot read (a group-by field missing or not a scalar, a value not a
finite number) or that its filter refuses is not in that aggregation: it is counted by name
in `AggStep.skipped` (the pipeline's filtered metric, filter "aggregation:<name>"). It stays
archived; the default aggregation and the other declared ones are not affected.

Results carry the aggregation's name, and so does their identity (WindowResult.result_id):
(aggregation, window, key, shard). The default aggregation (built from [windows] and
[contract], name "") runs as before, outside this set, and keeps today's ids and snapshot
bytes (consumer/pipeline.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import msgspec

from consumer.records.model import Event
from consumer.transform.columns import FieldBatch, Rows
from consumer.transform.expr import Expr
from consumer.transform.model import ROUTE_FIELD, Reject
from consumer.windows.engine import WindowEngine
from consumer.windows.model import StepOutput, WindowResult, WindowSpec

Path = tuple[str, ...]
SET_SNAPSHOT_VERSION = 1
_MISSING = object()
_TS = attrgetter("ts_ms")


@dataclass(frozen=True)
class Aggregation:
    """One declared aggregation. group_by and value are field paths (split on '.'); value
    None: the record's contract reading (its schema version's value field)."""

    name: str
    group_by: tuple[Path, ...]
    value: Path | None
    spec: WindowSpec
    filter: Expr | None = field(default=None, compare=False)


def _get(fields: Any, path: Path) -> Any:
    for part in path:
        if not isinstance(fields, Mapping):
            return _MISSING
        fields = fields.get(part, _MISSING)
        if fields is _MISSING:
            return _MISSING
    return fields


def _key_part(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    return None  # null, float, list, object: not a group-by value


def read_event(agg: Aggregation, fields: Mapping[str, Any], ev: Event) -> Event | None:
    """The aggregation's Event of a record (ev: the contract's, for its time and record),
    or None when the record is not in it."""
    routed = fields.get(ROUTE_FIELD, _MISSING)
    if isinstance(routed, list) and agg.name not in routed:
        return None  # a route step sent it elsewhere
    if agg.filter is not None:
        keep = agg.filter.evaluate(fields)
        if isinstance(keep, Reject) or keep is not True:
            return None
    parts = [_key_part(_get(fields, p)) for p in agg.group_by]
    if None in parts:
        return None
    v = ev.value if agg.value is None else _get(fields, agg.value)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return Event(tuple(parts), ev.ts_ms, float(v), ev.record)  # type: ignore[arg-type]


def _top_level_paths(agg: Aggregation) -> tuple[Path, ...] | None:
    """The fields the fast rule reads (group-by, then the value unless it is the contract
    reading), when they are all top-level and there is no filter; else None."""
    paths = agg.group_by if agg.value is None else (*agg.group_by, agg.value)
    if agg.filter is not None or any(len(p) != 1 for p in paths):
        return None
    return paths


def read_events(agg: Aggregation, batch: Sequence[tuple[Mapping[str, Any], Event]]
                ) -> list[Event]:
    """[read_event(agg, f, ev) for f, ev in batch], without the Nones. For the common
    declaration (top-level fields, no filter, no route step in the chain) the fields are
    read by columns and a record whose key parts are strings and whose value is a float
    is taken without a call per record."""
    paths = _top_level_paths(agg)
    if paths is None or any(ROUTE_FIELD in f for f, _ in batch):
        return [e for e in (read_event(agg, f, ev) for f, ev in batch) if e is not None]
    cols = [[f.get(p[0]) for f, _ in batch] for p in paths]
    values = [ev.value for _, ev in batch] if agg.value is None else cols.pop()
    keys = list(zip(*cols, strict=True))
    out: list[Event] = []
    for key, v, (fields, ev) in zip(keys, values, batch, strict=True):
        if type(v) is float and v - v == 0.0 and all(type(k) is str for k in key):
            out.append(Event(key, ev.ts_ms, v, ev.record))
        elif (e := read_event(agg, fields, ev)) is not None:  # ints, other key types
            out.append(e)
    return out


def read_columns(agg: Aggregation, fields: FieldBatch, events: Sequence[Event]
                 ) -> tuple[list[tuple[str, ...]], list[float]] | None:
    """The keys and values of read_events over the rows of `fields`, when it reads every
    record by the fast rule (top-level fields, no filter, no route step's field; key
    parts all strings, values all finite numbers, no bool): else None."""
    if _top_level_paths(agg) is None or ROUTE_FIELD in fields.columns:
        return None
    parts = [fields.column(p[0]) for p in agg.group_by]
    # value None: each record's contract reading (its version's field), as read_event does.
    values = [e.value for e in events] if agg.value is None else fields.column(agg.value[0])
    if any(set(map(type, c)) != {str} for c in parts):
        return None
    kinds = set(map(type, values))
    if not kinds <= {float, int} or not all(map(math.isfinite, values)):
        return None
    return list(zip(*parts, strict=True)), values if kinds == {float} else \
        list(map(float, values))


@dataclass
class AggStep:
    """One step of every aggregation: its output by name, and the records each skipped."""

    outputs: dict[str, StepOutput]
    skipped: dict[str, int]


class AggregationSet:
    """One engine per aggregation, stepped together (same batches, same ticks)."""

    def __init__(self, aggregations: Sequence[Aggregation], shard_id: str,
                 engines: Mapping[str, WindowEngine] | None = None) -> None:
        names = [a.name for a in aggregations]
        if len(set(names)) != len(names) or "" in names:
            raise ValueError(f"aggregation names must be distinct and non-empty: {names}")
        self.aggregations = tuple(aggregations)
        self.shard_id = shard_id
        self.engines = dict(engines) if engines is not None else {
            a.name: WindowEngine(a.spec, shard_id, a.name) for a in aggregations}

    def process(self, batch: Sequence[tuple[Mapping[str, Any], Event]],
                now_ms: int) -> AggStep:
        """Each aggregation over the records of the batch it can read (shard order). An
        aggregation that reads none of them does not step: as for the default engine after
        a transform chain, only tick() moves a watermark by processing time, so a replay
        batched otherwise judges lateness the same."""
        outputs: dict[str, StepOutput] = {}
        skipped: dict[str, int] = {}
        for agg in self.aggregations:
            mine = read_events(agg, batch)
            if len(mine) < len(batch):
                skipped[agg.name] = len(batch) - len(mine)
            out = self.engines[agg.name].process(mine, now_ms) if mine else StepOutput([], [])
            outputs[agg.name] = out
        return AggStep(outputs, skipped)

    def process_columns(self, fields: FieldBatch, events: Sequence[Event],
                        now_ms: int) -> AggStep:
        """process(list(zip(fields.rows(), events))), the same output: an aggregation that
        read_columns can read is stepped over columns, the others over the rows."""
        outputs: dict[str, StepOutput] = {}
        skipped: dict[str, int] = {}
        rows: Rows | None = None
        for agg in self.aggregations:
            engine = self.engines[agg.name]
            cols = read_columns(agg, fields, events) if events else None
            if cols is not None:
                keys, values = cols
                outputs[agg.name] = engine.process_columns(keys, list(map(_TS, events)), values,
                                                           events, now_ms)
                continue
            rows = rows if rows is not None else Rows(fields)
            mine = read_events(agg, list(zip(rows, events, strict=True)))
            if len(mine) < len(events):
                skipped[agg.name] = len(events) - len(mine)
            outputs[agg.name] = engine.process(mine, now_ms) if mine else StepOutput([], [])
        return AggStep(outputs, skipped)

    def tick(self, now_ms: int) -> dict[str, StepOutput]:
        return {n: e.tick(now_ms) for n, e in self.engines.items()}

    def close_all(self) -> dict[str, StepOutput]:
        return {n: e.close_all() for n, e in self.engines.items()}

    @property
    def state_bytes(self) -> int:
        return sum(e.state_bytes for e in self.engines.values())

    def snapshot(self, default: bytes | None = None) -> bytes:
        """Every engine's snapshot (and the default engine's, if any) in one value."""
        return msgspec.msgpack.encode({
            "version": SET_SNAPSHOT_VERSION, "default": default,
            "aggregations": {n: e.snapshot() for n, e in self.engines.items()}})

    @classmethod
    def restore(cls, aggregations: Sequence[Aggregation], shard_id: str, data: bytes,
                now_ms: int | None = None) -> tuple[AggregationSet, bytes | None]:
        """The set of a snapshot, and the default engine's snapshot it holds. An
        aggregation declared since the snapshot starts empty; one no longer declared is
        dropped (its results objects stay as they are)."""
        s: dict[str, Any] = msgspec.msgpack.decode(data)
        if s.get("version") != SET_SNAPSHOT_VERSION:
            raise ValueError(f"aggregation set snapshot version {s.get('version')!r}")
        saved: dict[str, bytes] = s["aggregations"]
        engines = {}
        for a in aggregations:
            eng = WindowEngine.restore(saved[a.name], now_ms, a.name) if a.name in saved \
                else None
            # A window changed since the snapshot: its old state means nothing to the new one.
            engines[a.name] = eng if eng is not None and eng.spec == a.spec else \
                WindowEngine(a.spec, shard_id, a.name)
        return cls(aggregations, shard_id, engines), s["default"]


def is_set_snapshot(data: bytes) -> bool:
    """A snapshot written by AggregationSet.snapshot (else a plain engine's)."""
    s = msgspec.msgpack.decode(data)
    return isinstance(s, dict) and "aggregations" in s


def by_aggregation(results: Sequence[WindowResult]) -> dict[str, list[WindowResult]]:
    out: dict[str, list[WindowResult]] = {}
    for r in results:
        out.setdefault(r.aggregation, []).append(r)
    return out
