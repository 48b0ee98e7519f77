"""Property tests of the column paths against the record-by-record ones they stand for:
decode_fields = orjson.loads per record, Chain.run_columns = Chain.run over the rows,
AggregationSet.process_columns = AggregationSet.process over the rows, and run_stage with
the decoder's fields = run_stage parsing each record (consumer/transform/columns.py)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.contract import Contract
from consumer.records.decode import decode_columns, decode_fields
from consumer.records.model import Event, Position, RawRecord
from consumer.transform.chain import Chain
from consumer.transform.columns import FieldBatch
from consumer.transform.config import parse_chain
from consumer.transform.expr import compile_expr
from consumer.transform.fields import MISSING
from consumer.transform.lookup import LookupTable, parse_csv
from consumer.transform.stage import contract_paths, decode_with_fields, run_stage
from consumer.transform.tables import LookupSource
from consumer.windows import WindowSpec
from consumer.windows.aggregations import Aggregation, AggregationSet

TABLE_CSV = b"device_id,site,floor\nd1,plant-a,1\nd2,plant-b,2\n7,plant-c,3\ntrue,plant-d,4\n"


def _table(src: LookupSource) -> LookupTable:
    return parse_csv(TABLE_CSV, src.key, "sites.csv")


def typed(rows: Any) -> list[list[tuple[str, str]]]:
    """Rows compared with their values' types (1 == 1.0, but a row must not change one
    into the other), in any field order."""
    return [sorted((k, repr(v)) for k, v in r.items()) for r in rows]


def _records(texts: list[bytes]) -> list[RawRecord]:
    return [RawRecord(t, "pk", Position(i, 0), 1000 + i) for i, t in enumerate(texts)]


# --- decode_fields ------------------------------------------------------------------------

iso = st.builds(lambda s, ms: f"2026-11-26T08:{s // 60:02d}:{s % 60:02d}.{ms:03d}Z",
                st.integers(0, 3599), st.integers(0, 999))
numbers = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10),
                    st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, -(2**63), 2**64 - 1,
                                                                  2**64, -(2**63) - 1]))
payloads = st.fixed_dictionaries(
    {"device_id": st.text(min_size=1, max_size=4), "metric": st.sampled_from(["t", "h"]),
     "value": numbers, "ts": st.one_of(iso, st.integers(0, 2**41))},
    optional={"extra": st.integers()})


@st.composite
def encoded(draw: st.DrawFn) -> list[bytes]:
    """Payloads, each with its fields in a drawn order (json.dumps: ints of any size)."""
    out = []
    for p in draw(st.lists(payloads, min_size=1, max_size=12)):
        items = draw(st.permutations(list(p.items())))
        out.append(json.dumps(dict(items), ensure_ascii=draw(st.booleans())).encode())
    return out


@settings(max_examples=300, deadline=None)
@given(encoded())
def test_decode_fields_reads_what_orjson_reads(texts: list[bytes]) -> None:
    records = _records(texts)
    got = decode_fields(records, Contract())
    cols = decode_columns(records, Contract())
    if got is None:  # only where decode_columns refuses, for a field beyond the contract's
        # (the transforms read fields by name), an int orjson reads as a float, or epoch ms
        # and ISO strings in one batch (decode_columns takes those)
        payloads = list(map(json.loads, texts))
        assert cols is None or len({type(p["ts"]) for p in payloads}) > 1 or any(
            "extra" in p or (type(p["value"]) is int and not -(2**63) <= p["value"] < 2**64)
            for p in payloads)
        return
    assert cols is not None and cols.rejected == [] and cols.records == records
    assert got[0] == (cols.keys, cols.ts, cols.values)
    assert typed(FieldBatch(got[1], len(records)).rows()) == \
        typed(orjson.loads(t) for t in texts)


# --- the chain ----------------------------------------------------------------------------

POOL: list[dict[str, Any]] = [
    {"name": "pct", "kind": "derive", "field": "value_pct", "expr": "value / 100.0"},
    {"name": "celsius", "kind": "derive", "field": "temp_c", "expr": "(temp_f - 32.0) / 1.8"},
    {"name": "both", "kind": "derive", "field": "sum", "expr": "value + temp_f"},
    {"name": "over", "kind": "derive", "field": "value", "expr": "value * 2.0"},
    {"name": "no-rssi", "kind": "filter", "expr": "metric != 'rssi'"},
    {"name": "warm", "kind": "filter", "expr": "temp_f > 40.0"},
    {"name": "sites", "kind": "lookup", "source": "sites.csv", "key": "device_id"},
    {"name": "sites-into", "kind": "lookup", "source": "sites.csv", "key": "device_id",
     "prefix": "s_"},
    {"name": "sites-strict", "kind": "lookup", "source": "sites.csv", "key": "device_id",
     "on_miss": "reject"},
    {"name": "sites-default", "kind": "lookup", "source": "sites.csv", "key": "device_id",
     "on_miss": "default", "defaults": {"site": "none"}},
    {"name": "ren", "kind": "rename", "fields": {"device_id": "meta.device"}},
    {"name": "tag", "kind": "set", "values": {"site": "fixed"}},
]
values = st.one_of(st.just(MISSING), st.none(), st.booleans(), st.integers(-100, 200),
                   st.floats(-100, 200, allow_nan=False), st.sampled_from(["41", "x", "rssi"]))
COLUMNS = {
    "device_id": st.one_of(st.just(MISSING), st.sampled_from(["d1", "d2", "d3", "7", "true"]),
                           st.integers(6, 8), st.booleans(), st.none(), st.just(["d1"])),
    "metric": st.one_of(st.sampled_from(["t", "rssi"]), values),
    "value": values, "temp_f": values, "site": values,
}


@st.composite
def field_batches(draw: st.DrawFn, size: int | None = None) -> FieldBatch:
    n = draw(st.integers(0, 20)) if size is None else size
    names = draw(st.lists(st.sampled_from(list(COLUMNS)), unique=True))
    # Mostly one kind per column (the common case the column paths are for), sometimes mixed.
    cols = {}
    for name in names:
        if draw(st.booleans()):
            one = draw(COLUMNS[name])
            cols[name] = [one if draw(st.integers(0, 4)) else draw(COLUMNS[name])
                          for _ in range(n)]
        else:
            cols[name] = draw(st.lists(COLUMNS[name], min_size=n, max_size=n))
    return FieldBatch(cols, n)


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    picked = draw(st.lists(st.sampled_from(POOL), max_size=5, unique_by=lambda t: t["name"]))
    return parse_chain(picked, "test", Path("."), _table).chain


@settings(max_examples=400, deadline=None)
@given(chains(), field_batches())
def test_the_chain_by_columns_equals_the_chain_over_rows(chain: Chain,
                                                         batch: FieldBatch) -> None:
    by_columns = chain.run_columns(batch)
    by_rows = chain.run(batch.rows())
    assert by_columns.index == by_rows.index
    assert typed(by_columns.fields) == typed(by_rows.fields)
    assert by_columns.refused == by_rows.refused
    assert by_columns.filtered == by_rows.filtered
    if by_columns.columns is not None:
        assert typed(by_columns.columns.rows()) == typed(by_rows.fields)


# --- declared aggregations ----------------------------------------------------------------

AGG_COLUMNS = {
    "device": st.one_of(st.sampled_from(["d1", "d2"]), st.just(MISSING), st.integers(1, 2),
                        st.none(), st.booleans()),
    "metric": st.sampled_from(["t", "h"]),
    "value": st.one_of(st.floats(-5, 5), st.integers(-5, 5), st.booleans(), st.just("x"),
                       st.just(float("inf")), st.just(MISSING)),
    "_aggregations": st.sampled_from([["per_device"], ["other"], "bad"]),
}


@st.composite
def agg_stream(draw: st.DrawFn) -> list[tuple[FieldBatch, list[Event]]]:
    n = draw(st.integers(0, 40))
    names = ["metric", *draw(st.lists(st.sampled_from(["device", "value", "_aggregations"]),
                                      unique=True))]
    cols = {}
    for name in names:
        common = draw(AGG_COLUMNS[name])
        cols[name] = [common if draw(st.integers(0, 5)) else draw(AGG_COLUMNS[name])
                      for _ in range(n)]
    events = []
    for i in range(n):
        jitter = draw(st.integers(-20, 20)) if draw(st.integers(0, 5)) else \
            -draw(st.integers(0, 200))
        rec = RawRecord(b"{}", "pk", Position(i, 0), 0)
        reading = float(draw(st.integers(-5, 5)))  # the contract's (its version's) value
        events.append(Event(("x",), max(0, 1000 + i * 4 + jitter), reading, rec))
    bounds = [0, *sorted(draw(st.lists(st.integers(0, n), max_size=4))), n]
    return [(FieldBatch({k: c[a:b] for k, c in cols.items()}, b - a), events[a:b])
            for a, b in pairwise(bounds)]


@st.composite
def agg_sets(draw: st.DrawFn) -> list[Aggregation]:
    def spec() -> WindowSpec:
        kind = draw(st.sampled_from(["tumbling", "sliding", "session"]))
        return WindowSpec(kind=kind, size_ms=draw(st.sampled_from([20, 60])),  # type: ignore[arg-type]
                          slide_ms=10 if kind == "sliding" else None, gap_ms=30,
                          allowed_lateness_ms=draw(st.sampled_from([0, 15])),
                          out_of_orderness_ms=draw(st.sampled_from([0, 10])),
                          quantiles=draw(st.booleans()))
    flt = compile_expr("value > 0") if draw(st.booleans()) else None
    return [Aggregation("per_device", (("device",),), ("value",), spec()),
            Aggregation("per_metric", (("metric",),), ("value",), spec(), flt),
            Aggregation("by_value", (("value",),), ("value",), spec()),
            Aggregation("by_reading", (("device",),), None, spec())]


@settings(max_examples=150, deadline=None)
@given(agg_stream(), agg_sets())
def test_aggregations_by_columns_equal_them_over_rows(
        stream: list[tuple[FieldBatch, list[Event]]], aggs: list[Aggregation]) -> None:
    by_columns, by_rows = AggregationSet(aggs, "s"), AggregationSet(aggs, "s")
    for now, (fields, events) in enumerate(stream):
        if not events:
            continue  # the pipeline does not step the aggregations on an empty batch
        got = by_columns.process_columns(fields, events, now)
        want = by_rows.process(list(zip(fields.rows(), events, strict=True)), now)
        assert got.skipped == want.skipped
        assert {n: (o.results, o.late) for n, o in got.outputs.items()} == \
            {n: (o.results, o.late) for n, o in want.outputs.items()}
        assert by_columns.snapshot() == by_rows.snapshot()
    assert by_columns.close_all() == by_rows.close_all()


# --- the stage ----------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(chains(), encoded())
def test_the_stage_with_the_decoders_fields_equals_it_parsing_each_record(
        chain: Chain, texts: list[bytes]) -> None:
    records, contract = _records(texts), Contract()
    events, rejected, fields = decode_with_fields(records, contract)
    keep = not chain.may_write(contract_paths(contract))
    got = run_stage(chain, events, rejected, contract, keep, fields)
    want = run_stage(chain, events, rejected, contract, keep)
    assert (got.events, got.archive, got.rejected, got.filtered) == \
        (want.events, want.archive, want.rejected, want.filtered)
    assert typed(got.fields) == typed(want.fields)
