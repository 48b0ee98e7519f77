"""Property tests of the transform chain (consumer/transform), with real CEL programs and a
real lookup table: batch = record by record, nothing lost, provenance kept, filters count
what they drop, lookups miss as documented (consumer/transform/lookup.py's docstring)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.model import Position, RawRecord
from consumer.transform import Chain, ChainResult, Reject, TRecord
from consumer.transform.config import parse_chain
from consumer.transform.lookup import LookupTable, parse_csv
from consumer.transform.tables import LookupSource

TABLE_CSV = b"device_id,site,floor\nd1,plant-a,1\nd2,plant-b,2\n7,plant-c,3\ntrue,plant-d,4\n"


def _table(src: LookupSource) -> LookupTable:
    return parse_csv(TABLE_CSV, src.key, "sites.csv")


def flaky(batch: list[dict[str, Any]]) -> list[Any]:
    """An elementwise plug-in that raises on one kind of record and rejects another."""
    out: list[Any] = []
    for fields in batch:
        if fields.get("device_id") == "boom":
            raise RuntimeError("boom")
        if fields.get("device_id") == "nope":
            out.append(Reject("nope", "refused"))
        else:
            out.append({**fields, "seen": True})
    return out


POOL: list[dict[str, Any]] = [
    {"name": "num", "kind": "convert", "field": "temp_f", "type": "float"},
    {"name": "celsius", "kind": "derive", "field": "temp_c", "expr": "(temp_f - 32.0) * 5.0 / 9.0"},
    {"name": "warm", "kind": "filter", "expr": "temp_f > 40.0"},
    {"name": "sites", "kind": "lookup", "source": "sites.csv", "key": "device_id"},
    {"name": "sites-strict", "kind": "lookup", "source": "sites.csv", "key": "device_id",
     "on_miss": "reject"},
    {"name": "ren", "kind": "rename", "fields": {"device_id": "meta.device"}},
    {"name": "back", "kind": "rename", "fields": {"meta.device": "device_id"}},
    {"name": "tag", "kind": "set", "values": {"env": "test", "meta.v": 2}},
    {"name": "drop", "kind": "drop", "fields": ["extra", "meta.v"]},
    {"name": "route-all", "kind": "route", "to": ["a", "b"]},
    {"name": "route-warm", "kind": "route", "to": ["b", "c"], "when": "temp_f > 60.0"},
    {"name": "plug", "kind": "plugin", "callable": f"{__name__}:flaky"},
]

values = st.one_of(st.none(), st.booleans(), st.integers(-100, 200),
                   st.floats(-100, 200, allow_nan=False), st.sampled_from(["41", "x", ""]))
fields_st = st.fixed_dictionaries(
    {},
    optional={"device_id": st.one_of(st.sampled_from(["d1", "d2", "d3", "boom", "nope"]),
                                     st.integers(6, 8), st.booleans(), st.none()),
              "temp_f": values, "extra": values,
              "meta": st.sampled_from([{"k": 1}, "flat", None])},
)


@st.composite
def batches(draw: st.DrawFn) -> list[TRecord]:
    rows = draw(st.lists(fields_st, max_size=25))
    return [TRecord(f, RawRecord(repr(f).encode(), f"pk{i}", Position(i, 0), 1000 + i))
            for i, f in enumerate(rows)]


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    picked = draw(st.lists(st.sampled_from(POOL), max_size=7, unique_by=lambda t: t["name"]))
    return parse_chain(picked, "test", Path("."), _table).chain


def one_by_one(chain: Chain, batch: list[TRecord]) -> ChainResult:
    parts = [chain.apply([t]) for t in batch]
    filtered: dict[str, int] = {}
    for p in parts:
        for k, v in p.filtered.items():
            filtered[k] = filtered.get(k, 0) + v
    return ChainResult(tuple(r for p in parts for r in p.records),
                       tuple(r for p in parts for r in p.rejected), filtered)


@settings(max_examples=300, deadline=None)
@given(chains(), batches())
def test_batch_equals_record_by_record(chain: Chain, batch: list[TRecord]) -> None:
    whole, parts = chain.apply(batch), one_by_one(chain, batch)
    assert whole == parts


@settings(max_examples=300, deadline=None)
@given(chains(), batches())
def test_every_record_is_kept_rejected_or_counted_once_with_provenance(
        chain: Chain, batch: list[TRecord]) -> None:
    before = copy.deepcopy([t.fields for t in batch])
    out = chain.apply(batch)
    assert [t.fields for t in batch] == before  # no step changed its input
    kept = [t.record for t in out.records]
    refused = [r.record for r in out.rejected]
    assert len(kept) + len(refused) + sum(out.filtered.values()) == len(batch)
    originals = {id(t.record): t.record for t in batch}
    # Each output names its own input record, once, unchanged (the same object).
    assert len({id(r) for r in kept + refused}) == len(kept + refused)
    assert all(id(r) in originals for r in kept + refused)
    names = {s.name for s in chain.steps}
    for r in out.rejected:
        step, _, reason = r.reason.partition(":")
        assert r.stage == "transform" and step in names and reason
        assert step in r.message
    # Outputs keep input order.
    positions = [r.position for r in kept]
    assert positions == sorted(positions)
    assert set(out.filtered) <= {s.name for s in chain.steps if s.kind in ("filter", "plugin")}


FILTER = parse_chain([{"name": "hot", "kind": "filter", "expr": "t > 30.0"}], "test", Path("."),
                     _table).chain


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-50, 80), st.floats(-50, 80, allow_nan=False)),
                max_size=40))
def test_a_filter_counts_exactly_what_it_drops(temps: list[float]) -> None:
    batch = [TRecord({"t": t}, RawRecord(b"{}", "", Position(i, 0), 0))
             for i, t in enumerate(temps)]
    out = FILTER.apply(batch)
    dropped = [t for t in temps if not t > 30]
    assert out.filtered.get("hot", 0) == len(dropped)
    assert [t.fields["t"] for t in out.records] == [t for t in temps if t > 30]
    assert out.rejected == ()


TABLE_KEYS = {"d1", "d2", "7", "true"}


def documented_hit(value: Any) -> str | None:
    """The lookup docstring's rule, written out independently: the key's text form."""
    if value is True:
        return "true" if "true" in TABLE_KEYS else None
    if value is False:
        return None
    if isinstance(value, str):
        return value if value in TABLE_KEYS else None
    if isinstance(value, int):
        return str(value) if str(value) in TABLE_KEYS else None
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value)) if str(int(value)) in TABLE_KEYS else None
    return None


MISSING = object()
keys = st.one_of(st.just(MISSING), st.none(), st.booleans(), st.integers(5, 9),
                 st.sampled_from([7.0, 7.5, "d1", "d2", "d9", "7", "", "D1"]), st.just({"x": 1}),
                 st.just([7]))


@settings(max_examples=300, deadline=None)
@given(key=keys, mode=st.sampled_from(["keep", "default", "reject"]))
def test_lookups_hit_and_miss_as_documented(key: Any, mode: str) -> None:
    table: dict[str, Any] = {"name": "site", "kind": "lookup", "source": "sites.csv",
                             "key": "device_id", "on_miss": mode, "prefix": "s_"}
    if mode == "default":
        table["defaults"] = {"site": "unknown"}
    chain = parse_chain([table], "test", Path("."), _table).chain
    fields = {} if key is MISSING else {"device_id": key}
    rec = RawRecord(b"{}", "pk", Position(1, 0), 0)
    out = chain.apply([TRecord(fields, rec)])
    hit = documented_hit(None if key is MISSING else key)
    sites = {"d1": "plant-a", "d2": "plant-b", "7": "plant-c", "true": "plant-d"}
    floors = {"d1": "1", "d2": "2", "7": "3", "true": "4"}
    if hit is not None:
        assert [t.fields for t in out.records] == [
            {**fields, "s_site": sites[hit], "s_floor": floors[hit]}]
    elif mode == "keep":
        assert [t.fields for t in out.records] == [fields] and out.rejected == ()
    elif mode == "default":
        assert [t.fields for t in out.records] == [{**fields, "s_site": "unknown"}]
    else:
        assert out.records == ()
        assert [(r.record, r.stage, r.reason) for r in out.rejected] == [
            (rec, "transform", "site:lookup_miss")]
