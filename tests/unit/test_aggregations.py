"""Several aggregations over one stream (consumer/windows/aggregations.py), property-tested:
- the set equals separate single-aggregation runs, and a plain WindowEngine over the events
  the aggregation reads;
- its final results and late records equal a Polars GROUP BY oracle of the same records
  (event-time tumbling and sliding windows, with late data);
- snapshot + restore mid-stream changes nothing.
Values are small integers so sums are exact whatever the order.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.config import ConfigError, Settings, load_settings
from consumer.pipeline import contract_from
from consumer.records.decode import decode_batch
from consumer.records.model import Event, Position, RawRecord
from consumer.transform.expr import compile_expr
from consumer.windows import WindowEngine, WindowSpec, result_id
from consumer.windows.aggconfig import parse_aggregations
from consumer.windows.aggregations import Aggregation, AggregationSet, read_event, read_events
from consumer.windows.model import WindowResult

SHARD = "shardId-000000000001"
Batch = list[tuple[dict[str, Any], Event]]


FILTERS = {"value >= 0": compile_expr("value >= 0"), "value > 0": compile_expr("value > 0")}


def _agg(name: str, group_by: list[str], spec: WindowSpec, flt: str | None = None,
         value: str = "value") -> Aggregation:
    return Aggregation(name, tuple(tuple(p.split(".")) for p in group_by),
                       tuple(value.split(".")), spec, FILTERS[flt] if flt else None)


@st.composite
def stream(draw: st.DrawFn) -> list[Batch]:
    """Records with a device, a metric, a nested site and a value, out of order (some far
    behind: late), cut into batches."""
    n = draw(st.integers(0, 50))
    out: list[tuple[dict[str, Any], Event]] = []
    for i in range(n):
        jitter = draw(st.integers(-20, 20)) if draw(st.integers(0, 5)) else \
            -draw(st.integers(0, 200))
        ts = max(0, 1000 + i * 4 + jitter)
        fields = {"device": draw(st.sampled_from(["d1", "d2", "d3"])),
                  "metric": draw(st.sampled_from(["t", "h"])),
                  "meta": {"site": draw(st.sampled_from(["s1", "s2"]))},
                  "value": draw(st.integers(-20, 20)), "ts": ts}
        if draw(st.integers(0, 9)) == 0:
            del fields["device"]  # not readable by a per_device aggregation
        rec = RawRecord(orjson.dumps(fields), "pk", Position(10**25 + i, 0), 0)
        out.append((fields, Event(("x",), ts, float(fields["value"]), rec)))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    bounds = [0, *cuts, n]
    return [out[a:b] for a, b in pairwise(bounds)]


@st.composite
def aggregations(draw: st.DrawFn, kinds: tuple[str, ...] = ("tumbling", "sliding")
                 ) -> list[Aggregation]:
    def spec() -> WindowSpec:
        kind = draw(st.sampled_from(kinds))
        return WindowSpec(kind=kind, size_ms=draw(st.sampled_from([20, 60])), slide_ms=10 if  # type: ignore[arg-type]
                          kind == "sliding" else None, gap_ms=draw(st.sampled_from([5, 30])),
                          allowed_lateness_ms=draw(st.sampled_from([0, 15])),
                          out_of_orderness_ms=draw(st.sampled_from([0, 10])),
                          quantiles=draw(st.booleans()))
    return [_agg("per_device", ["device"], spec()),
            _agg("per_metric_site", ["metric", "meta.site"], spec(), "value >= 0")]


def _run(aggs: list[Aggregation], batches: list[Batch]) -> dict[str, list[Any]]:
    s = AggregationSet(aggs, SHARD)
    out: dict[str, list[Any]] = {a.name: [] for a in aggs}
    for i, batch in enumerate(batches):
        for name, step in s.process(batch, i).outputs.items():
            out[name].append((step.results, [r.record.position for r in step.late]))
    for name, step in s.close_all().items():
        out[name].append((step.results, []))
    return out


@settings(max_examples=60, deadline=None)
@given(stream(), aggregations(("tumbling", "sliding", "session")))
def test_several_equal_separate_runs_and_plain_engines(batches: list[Batch],
                                                       aggs: list[Aggregation]) -> None:
    together = _run(aggs, batches)
    for agg in aggs:
        assert together[agg.name] == _run([agg], batches)[agg.name]
        # ...and a plain engine over the events this aggregation reads, renamed.
        eng = WindowEngine(agg.spec, SHARD)
        plain = []
        for i, batch in enumerate(batches):
            mine = [e for e in (read_event(agg, f, ev) for f, ev in batch) if e is not None]
            step = eng.process(mine, i) if mine else None
            plain.append(([r.result_id for r in step.results] if step else [],
                          [r.record.position for r in step.late] if step else []))
        plain.append(([r.result_id for r in eng.close_all().results], []))
        ids = [([result_id(r.kind, r.start_ms, r.end_ms, r.key, r.shard_id)
                 for r in res], late) for res, late in together[agg.name]]
        assert ids == plain


def _oracle(agg: Aggregation, batches: list[Batch]) -> tuple[dict[Any, tuple], set[Position]]:
    """Polars: the watermark before each record is the running max of (ts - ooo) over the
    records before it; a record is late for a window when end + lateness <= that watermark;
    final results are the GROUP BY (window, key) of the records each window accepted."""
    spec = agg.spec
    size, slide = spec.size_ms, spec.slide_ms or spec.size_ms
    rows = [{"i": i, "key": e.key, "ts": e.ts_ms, "v": e.value}
            for i, e in enumerate(e for e in (read_event(agg, f, ev)
                                              for b in batches for f, ev in b) if e)]
    if not rows:
        return {}, set()
    positions = [e.record.position for e in (read_event(agg, f, ev)
                                             for b in batches for f, ev in b) if e]
    df = pl.DataFrame(rows, schema={"i": pl.Int64, "key": pl.List(pl.String),
                                    "ts": pl.Int64, "v": pl.Float64})
    df = df.with_columns(wm=(pl.col("ts") - spec.out_of_orderness_ms).cum_max()
                         .shift(1, fill_value=-(2**62)))
    last = pl.col("ts") - pl.col("ts") % slide
    df = df.with_columns(start=pl.int_ranges(last - size + slide, last + slide, slide)) \
        .explode("start")
    df = df.with_columns(late=pl.col("start") + size + spec.allowed_lateness_ms <= pl.col("wm"))
    late_ids = set(df.group_by("i").agg(pl.col("late").all()).filter(pl.col("late"))["i"])
    g = df.filter(~pl.col("late")).group_by("start", "key").agg(
        n=pl.len(), s=pl.col("v").sum(), lo=pl.col("v").min(), hi=pl.col("v").max())
    want = {(r["start"], tuple(r["key"])): (r["n"], r["s"], r["lo"], r["hi"])
            for r in g.iter_rows(named=True)}
    return want, {positions[i] for i in late_ids}


@settings(max_examples=60, deadline=None)
@given(stream(), aggregations())
def test_equal_a_polars_group_by(batches: list[Batch], aggs: list[Aggregation]) -> None:
    got = _run(aggs, batches)
    for agg in aggs:
        want, want_late = _oracle(agg, batches)
        last: dict[str, WindowResult] = {}
        for results, _ in got[agg.name]:
            for r in results:
                last[r.result_id] = r
        assert all(r.is_final and r.aggregation == agg.name for r in last.values())
        a = {(r.start_ms, r.key): (r.aggregates.count, r.aggregates.sum, r.aggregates.min,
                                   r.aggregates.max) for r in last.values()}
        assert a == want
        assert {p for _, late in got[agg.name] for p in late} == want_late


@settings(max_examples=40, deadline=None)
@given(stream(), aggregations(("tumbling", "sliding", "session")), st.integers(0, 6))
def test_snapshot_restore_mid_stream(batches: list[Batch], aggs: list[Aggregation],
                                     at: int) -> None:
    at = min(at, len(batches))
    s = AggregationSet(aggs, SHARD)
    before = [s.process(b, i).outputs for i, b in enumerate(batches[:at])]
    restored, default = AggregationSet.restore(aggs, SHARD, s.snapshot(b"x"))
    assert default == b"x"
    after = [restored.process(b, i).outputs for i, b in enumerate(batches[at:], at)]
    whole = AggregationSet(aggs, SHARD)
    assert before + after == [whole.process(b, i).outputs for i, b in enumerate(batches)]
    assert restored.close_all() == whole.close_all()


def test_ids_name_the_aggregation_and_default_keeps_todays() -> None:
    base = ("tumbling", 0, 60, ("d1",), SHARD)
    assert result_id(*base) == result_id(*base, "")
    assert result_id(*base, "a") != result_id(*base) != result_id(*base, "b")


def test_unreadable_records_are_counted_not_windowed() -> None:
    agg = _agg("per_device", ["device"], WindowSpec(), "value > 0")
    rec = RawRecord(b"{}", "pk", Position(1, 0), 0)
    batch = [({"device": "d", "value": 1}, Event(("x",), 5, 1.0, rec)),
             ({"value": 1}, Event(("x",), 5, 1.0, rec)),  # no group-by field
             ({"device": "d", "value": "1"}, Event(("x",), 5, 1.0, rec)),  # not a number
             ({"device": "d", "value": -1}, Event(("x",), 5, -1.0, rec)),  # filtered
             ({"device": "d", "value": 2, "_aggregations": ["other"]},
              Event(("x",), 5, 2.0, rec))]  # routed elsewhere
    s = AggregationSet([agg], SHARD)
    assert s.process(batch, 0).skipped == {"per_device": 4}
    (r,) = s.close_all()["per_device"].results
    assert (r.key, r.aggregates.count, r.aggregation) == (("d",), 1, "per_device")


def test_settings_tables() -> None:
    aggs = parse_aggregations([
        {"name": "per_device", "group_by": ["device_id"]},
        {"name": "per_metric", "group_by": ["metric"], "quantiles": True, "filter": "value > 0",
         "window": {"kind": "sliding", "size_ms": 300_000, "slide_ms": 60_000,
                    "allowed_lateness_ms": 10_000}}], "test", Settings())
    assert [a.name for a in aggs] == ["per_device", "per_metric"]
    assert aggs[0].spec == WindowSpec() and aggs[0].value == ("value",)
    assert aggs[1].spec == WindowSpec(kind="sliding", size_ms=300_000, slide_ms=60_000,
                                      allowed_lateness_ms=10_000, quantiles=True)
    with pytest.raises(ConfigError) as err:
        parse_aggregations([{"name": "a", "group_by": ["x"], "window": {"kind": "hop"}},
                            {"name": "a", "group_by": ["x"]},
                            {"name": "b", "group_by": [], "colour": 1},
                            {"name": "Per-Device", "group_by": ["x"]}], "test", Settings())
    lines = err.value.problems
    assert any("aggregation[0] 'a': window: kind" in line for line in lines)
    assert any("aggregation[1] 'a': name: names must be unique" in line for line in lines)
    assert any("aggregation[2] 'b': colour: unknown" in line for line in lines)
    assert any("aggregation[3] 'Per-Device': name: needs a name of lower-case" in line
               for line in lines)


def test_each_declared_aggregation_has_its_own_table_view_and_indices() -> None:
    from fnmatch import fnmatch

    from consumer.sinks import opensearch as osr
    from consumer.sinks import redshift as rs

    plain, more = rs.ddl_statements("a"), rs.ddl_statements("a", aggregations=["per_device"])
    assert set(plain) < set(more)
    assert set(more) - set(plain) == {
        next(s for s in more if "TABLE IF NOT EXISTS a.window_results_per_device (" in s),
        rs.merged_view_sql("a", "per_device")}
    view = rs.merged_view_sql("a", "per_device")
    assert "VIEW a.window_results_per_device_merged AS" in view
    assert "FROM a.window_results_per_device\n" in view and "window_results\n" not in view
    templates = osr.index_templates("x", aggregations=["per_device"])
    mine = templates["x-results_per_device"]
    assert mine["template"]["aliases"] == {"x-results_per_device": {}}
    assert mine["template"]["mappings"] == templates["x-results"]["template"]["mappings"]
    index = osr.daily_index("x", osr.results_kind("per_device"), 0)
    assert index == "x-results_per_device-1970.01.01"
    assert not fnmatch(index, templates["x-results"]["index_patterns"][0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=15), st.booleans())
def test_the_stage_hands_each_event_its_output_fields(kinds: list[int], writes: bool) -> None:
    """StageOutput.fields[i] is the chain's output for events[i] (what declared aggregations
    group by), whether or not the chain may write a contract path (the two stage paths)."""
    from pathlib import Path

    from consumer.records.contract import Contract
    from consumer.records.decode import decode_batch
    from consumer.transform.config import parse_chain
    from consumer.transform.stage import run_stage

    rows = [{"device_id": f"d{k}", "metric": "t", "value": k + 0.5, "ts": 1000 + i}
            for i, k in enumerate(kinds)]
    records = [RawRecord(orjson.dumps(r), "k", Position(i, 0), 0) for i, r in enumerate(rows)]
    events, rejected = decode_batch(records, Contract())
    steps = [{"name": "odd", "kind": "filter", "expr": "value != 2.5"},
             {"name": "band", "kind": "derive", "field": "band",
              "expr": "value > 1.5 ? 'hi' : 'lo'"}]
    if writes:
        steps.append({"name": "twice", "kind": "derive", "field": "value",
                      "expr": "value * 2.0"})
    chain = parse_chain(steps, "t", Path("."), lambda _: None).chain  # type: ignore[arg-type,return-value]
    out = run_stage(chain, events, rejected, Contract(), keep_decoded=not writes)
    assert len(out.fields) == len(out.events) == sum(k != 2 for k in kinds)
    for fields, ev in zip(out.fields, out.events, strict=True):
        k = orjson.loads(ev.record.data)["value"]
        assert fields["band"] == ("hi" if k > 1.5 else "lo")
        assert fields["value"] == (2 * k if writes else k) == ev.value


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b"]),
                    st.floats(allow_nan=True, allow_infinity=True), st.just({"x": "a"}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["device", "metric", "value", "_aggregations",
                                                 "meta"]),
                                scalars | st.just(["per_device"]) | st.just(["other"]),
                                max_size=5), max_size=12),
       st.sampled_from([["device"], ["device", "metric"], ["meta.x"]]), st.booleans())
def test_reading_by_columns_equals_reading_each_record(rows: list[dict[str, Any]],
                                                       group_by: list[str],
                                                       filtered: bool) -> None:
    from consumer.windows.aggregations import read_events

    agg = _agg("per_device", group_by, WindowSpec(), "value > 0" if filtered else None)
    rec = RawRecord(b"{}", "pk", Position(1, 0), 0)
    batch = [(f, Event(("x",), i, 0.0, rec)) for i, f in enumerate(rows)]
    want = [e for e in (read_event(agg, f, ev) for f, ev in batch) if e is not None]
    assert read_events(agg, batch) == want
    # and the fast path itself, without the route field
    plain = [({k: v for k, v in f.items() if k != "_aggregations"}, ev) for f, ev in batch]
    assert read_events(agg, plain) == [e for e in (read_event(agg, f, ev)
                                                   for f, ev in plain) if e is not None]


def test_a_declared_aggregation_reads_each_schema_versions_value() -> None:
    """Without `value`, a versioned contract's aggregation measures each record's own
    version's value field (v1 `temp`, v2 `value`), as the default aggregation does; an
    explicit `value` stays that field, and an unversioned contract's default its path."""
    versions = ('[{"name": "v1", "when": 1, "value_field": "temp"}, '
                '{"name": "v2", "when": 2}]')
    cfg = load_settings(None, env={"AETHERSTREAM_CONTRACT_VERSION_FIELD": "schema_version",
                                   "AETHERSTREAM_CONTRACT_VERSIONS": versions})
    tables = [{"name": "by_version", "group_by": ["device_id"]},
              {"name": "explicit", "group_by": ["device_id"], "value": "value"}]
    implicit, explicit = parse_aggregations(tables, "test", cfg)
    assert (implicit.value, explicit.value) == (None, ("value",))
    assert parse_aggregations(tables[:1], "test", Settings())[0].value == ("value",)
    events, rejected = decode_batch([RawRecord(orjson.dumps(o), "pk", Position(i, 0), 0)
                                     for i, o in enumerate([
        {"schema_version": 1, "device_id": "d", "metric": "m", "ts": 1000, "temp": 5.0},
        {"schema_version": 2, "device_id": "d", "metric": "m", "ts": 2000, "value": 7.0}])],
        contract_from(cfg))
    assert rejected == [] and [e.value for e in events] == [5.0, 7.0]
    batch = [(orjson.loads(e.record.data), e) for e in events]
    both = AggregationSet([implicit, explicit], SHARD)
    assert both.process(batch, 0).skipped == {"explicit": 1}  # the v1 record has no `value`
    out = both.close_all()
    assert [(r.aggregates.count, r.aggregates.sum) for r in out["by_version"].results] == [
        (2, 12.0)]
    assert [(r.aggregates.count, r.aggregates.sum) for r in out["explicit"].results] == [
        (1, 7.0)]
    # record by record, the same
    assert [read_event(implicit, f, e) for f, e in batch] == read_events(implicit, batch)
