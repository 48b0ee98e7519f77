"""The transform stage as the pipeline runs it (consumer/transform/stage.py): decoded Events
in, the Events the windows see out. Properties: kept + rejected + filtered is the batch,
each Event keeps its raw record, and keeping the decoded Event (when no step can write a
contract field) gives exactly what decoding the chain's output gives. Also the memoised
expression evaluation, and the refresh thread against a real file."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.config import load_settings, settings_path
from consumer.metrics import registry as m
from consumer.records.contract import Contract
from consumer.records.decode import decode_batch
from consumer.records.model import Event, Position, RawRecord
from consumer.transform import Chain, Reject
from consumer.transform.config import load_chain, parse_chain
from consumer.transform.expr import compile_expr
from consumer.transform.stage import (
    LookupRefresh,
    TransformStage,
    contract_paths,
    decode_received,
    run_stage,
)
from consumer.transform.tables import Refresher, load_table
from tests.unit.test_transform_props import POOL, _table

CONTRACT = Contract()
PATHS = contract_paths(CONTRACT)

bodies = st.fixed_dictionaries(
    {"device_id": st.sampled_from(["d1", "d2", "d3", "nope"]),
     "metric": st.sampled_from(["t", "h"]),
     "value": st.one_of(st.integers(-50, 120), st.floats(-50, 120, allow_nan=False)),
     "ts": st.integers(1_795_000_000_000, 1_795_000_600_000)},
    optional={"temp_f": st.one_of(st.integers(-50, 120), st.sampled_from(["41", "x"])),
              "extra": st.sampled_from([1, "e", None]),
              "meta": st.sampled_from([{"k": 1}, "flat"])},
)


def events_of(rows: list[dict[str, Any]]) -> list[Event]:
    records = [RawRecord(orjson.dumps(r), f"pk{i}", Position(100 + i, 0), 0)
               for i, r in enumerate(rows)]
    events, rejected = decode_batch(records, CONTRACT)
    assert not rejected
    return events


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    picked = draw(st.lists(st.sampled_from(POOL), max_size=6, unique_by=lambda t: t["name"]))
    return parse_chain(picked, "test", Path("."), _table).chain


@settings(max_examples=150, deadline=None)
@given(chains(), st.lists(bodies, max_size=20))
def test_stage_partitions_the_batch_and_keeps_raw_records(chain: Chain,
                                                          rows: list[dict[str, Any]]) -> None:
    events = events_of(rows)
    out = run_stage(chain, events, [], CONTRACT, keep_decoded=False)
    kept = [e.record.position for e in out.events]
    refused = [r.record.position for r in out.rejected]
    assert len(kept) + len(refused) + sum(out.filtered.values()) == len(events)
    assert kept == sorted(kept) and refused == sorted(refused)
    assert not set(kept) & set(refused)
    raw = {e.record.position: e.record for e in events}
    assert all(e.record is raw[e.record.position] for e in out.events)
    assert all(r.record is raw[r.record.position] and r.stage == "transform"
               for r in out.rejected)
    # Every record met the contract as received: the archive gets the decoded Events.
    assert out.archive == events
    if not chain.may_write(PATHS):  # the shortcut gives exactly the decoded output
        assert run_stage(chain, events, [], CONTRACT, keep_decoded=True) == out


loose = st.fixed_dictionaries(
    {"dev": st.sampled_from(["d1", "d2"]), "ts": st.integers(1, 10**6)},
    optional={"device_id": st.sampled_from(["d1", "x"]), "metric": st.just("t"),
              "value": st.one_of(st.integers(0, 9), st.just("hot")),
              "temp_f": st.one_of(st.integers(0, 99), st.just("41"))})
README_LIKE = [
    {"name": "names", "kind": "rename", "fields": {"dev": "device_id"}},
    {"name": "num", "kind": "convert", "field": "temp_f", "type": "float"},
    {"name": "warm", "kind": "filter", "expr": "temp_f > 20.0"},
    {"name": "metric", "kind": "set", "values": {"metric": "temp_f"}},
    {"name": "value", "kind": "derive", "field": "value", "expr": "temp_f"},
]


@settings(max_examples=150, deadline=None)
@given(st.lists(loose, max_size=20), st.integers(1, len(README_LIKE)))
def test_records_that_meet_the_contract_only_after_the_chain_are_windowed(
        rows: list[dict[str, Any]], steps: int) -> None:
    records = [RawRecord(orjson.dumps(r), "k", Position(i, 0), 0) for i, r in enumerate(rows)]
    events, rejected = decode_batch(records, CONTRACT)
    chain = parse_chain(README_LIKE[:steps], "t", Path("."), _table).chain
    out = run_stage(chain, events, rejected, CONTRACT, keep_decoded=False)
    windowed = {e.record.position for e in out.events}
    refused = {r.record.position for r in out.rejected}
    assert len(windowed) + len(refused) + sum(out.filtered.values()) == len(records)
    assert not windowed & refused
    met_as_received = {e.record.position for e in events}
    # Archived: what has a reading, its own first; the rest is counted or quarantined.
    assert {e.record.position for e in out.archive} == windowed | met_as_received
    read = {e.record.position: e for e in out.events}
    assert [e for e in out.archive if e.record.position in met_as_received] == events
    assert all(e == read[e.record.position] for e in out.archive
               if e.record.position not in met_as_received)
    if steps == len(README_LIKE):  # the whole chain: every warm record is windowed
        warm = {Position(i, 0) for i, r in enumerate(rows)
                if isinstance(r.get("temp_f"), int | str) and float(r["temp_f"]) > 20}
        assert windowed == warm
        assert all(e.key == (orjson.loads(e.record.data)["dev"], "temp_f") for e in out.events)


def test_may_write_sees_every_step_that_can_touch_a_contract_field() -> None:
    def chain(*tables: dict[str, Any]) -> Chain:
        return parse_chain(list(tables), "t", Path("."), _table).chain

    assert not chain({"name": "d", "kind": "derive", "field": "v2", "expr": "value * 2.0"},
                     {"name": "f", "kind": "filter", "expr": "value > 1.0"},
                     {"name": "r", "kind": "route", "to": ["a"]}).may_write(PATHS)
    assert chain({"name": "d", "kind": "derive", "field": "value", "expr": "1.0"}
                 ).may_write(PATHS)
    assert chain({"name": "r", "kind": "rename", "fields": {"device_id": "dev"}}
                 ).may_write(PATHS)
    assert chain({"name": "s", "kind": "set", "values": {"ts.x": 1}}).may_write(PATHS)
    # The table's columns are site and floor: a prefix decides.
    lookup = {"name": "l", "kind": "lookup", "source": "sites.csv", "key": "device_id"}
    assert not chain(lookup).may_write(PATHS)
    assert chain({**lookup, "prefix": "me"}).may_write((("metric",), ("mesite",)))
    assert chain({"name": "p", "kind": "plugin",
                  "callable": "tests.unit.test_transform_props:flaky"}).may_write(PATHS)


def test_the_windows_see_the_chain_output_and_a_broken_contract_is_quarantined() -> None:
    chain = parse_chain([
        {"name": "f", "kind": "derive", "field": "value", "expr": "value * 1.8 + 32.0"},
        {"name": "strip", "kind": "drop", "fields": ["metric"]},
    ], "t", Path("."), _table).chain
    rows = [{"device_id": "d1", "metric": "t", "value": 10, "ts": 1_795_000_000_000}]
    events = events_of(rows)
    out = run_stage(chain, events, [], CONTRACT, keep_decoded=not chain.may_write(PATHS))
    assert out.events == []
    [r] = out.rejected
    assert (r.stage, r.reason, r.record) == ("transform", "contract:missing_field",
                                             events[0].record)
    assert "after the transform chain" in r.message and "'metric'" in r.message
    only = Chain(chain.steps[:1])
    [e] = run_stage(only, events, [], CONTRACT, keep_decoded=False).events
    assert (e.key, e.ts_ms, e.value, e.record) == (("d1", "t"), 1_795_000_000_000, 50.0,
                                                   events[0].record)


def sets(batch: list[dict[str, Any]]) -> list[Any]:
    return [{**f, "value": {1, 2}} for f in batch]


def test_a_plugin_output_json_cannot_hold_is_quarantined() -> None:
    chain = parse_chain([{"name": "p", "kind": "plugin", "callable": f"{__name__}:sets"}],
                        "t", Path("."), _table).chain
    events = events_of([{"device_id": "d1", "metric": "t", "value": 1, "ts": 1}])
    [r] = run_stage(chain, events, [], CONTRACT, keep_decoded=False).rejected
    assert r.reason == "contract:not_json"


def test_decode_received_equals_decode_batch() -> None:
    rows = [orjson.dumps({"device_id": "d", "metric": "m", "value": i, "ts": 1000 + i})
            for i in range(5)]
    clean = [RawRecord(d, "k", Position(i, 0), 0) for i, d in enumerate(rows)]
    dirty = [*clean, RawRecord(b"{", "k", Position(9, 0), 0)]
    for batch in (clean, dirty, []):
        assert decode_received(batch, CONTRACT) == decode_batch(batch, CONTRACT)


scalars = st.one_of(st.just(0.0), st.just(-0.0), st.just(1), st.just(1.0), st.booleans(),
                    st.none(), st.sampled_from(["a", "b", ""]), st.integers(-3, 3),
                    st.floats(-3, 3, allow_nan=False), st.just([1]), st.just({"k": 1}))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), scalars), max_size=30),
       st.sampled_from(["x * 2.0", "x == 1", "x", "string(x)", "x > 0.5", "x + y"]))
def test_memoised_evaluation_equals_evaluating_each_record(values: list[Any], src: str) -> None:
    batch = [{} if v is None else {"x": v, "y": 1.0} for v in values]
    fresh = compile_expr(src)
    want = [fresh._evaluate(f) for f in batch]  # the CEL call itself, no memo
    expr = compile_expr(src)
    got_many = expr.evaluate_many(batch)
    got_one = [expr.evaluate(f) for f in batch]
    for w, a, b in zip(want, got_many, got_one, strict=True):
        assert (same(w, a) and same(w, b)) or (isinstance(w, Reject) and w == a == b)


def test_settings_file_with_transform_tables_loads_and_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[windows]\nsize_ms = 30000\n\n[[transform]]\nname = "f"\nkind = "filter"'
                    '\nexpr = "value > 1.0"\n')
    assert load_settings(path, env={}).windows.size_ms == 30_000
    assert [s.name for s in load_chain(path).chain.steps] == ["f"]
    assert settings_path({"AETHERSTREAM_CONFIG": str(path)}) == str(path)
    assert settings_path({}) is None


def wait_for(cond: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_refresh_thread_swaps_tables_between_batches_and_keeps_them_on_failure(
        tmp_path: Path) -> None:
    table = tmp_path / "sites.csv"
    table.write_text("device_id,site\nd1,old\n")
    path = tmp_path / "s.toml"
    path.write_text('[[transform]]\nname = "sites"\nkind = "lookup"\nsource = "sites.csv"\n'
                    'key = "device_id"\nrefresh_s = 0.05\n')
    configured = load_chain(path)
    [src] = configured.sources
    refresh = LookupRefresh(Refresher(configured.sources, {"sites": load_table(src)},
                                      time.time())).start()
    stage = TransformStage(configured.chain, CONTRACT, refresh)
    events = events_of([{"device_id": "d1", "metric": "t", "value": 1, "ts": 5}])

    def site() -> Any:
        stage.apply(events)
        return stage.chain.lookups()["sites"].table.rows["d1"]["site"]

    try:
        assert site() == "old"
        table.write_text("device_id,site\nd1,new-site\n")
        wait_for(lambda: site() == "new-site")
        failures = m.REGISTRY.get_sample_value(
            "aetherstream_lookup_refresh_failures_total", {"step": "sites"}) or 0.0
        table.write_text("device_id,site\nd1,a\nd1,b\n")  # a key twice: refused
        wait_for(lambda: (m.REGISTRY.get_sample_value(
            "aetherstream_lookup_refresh_failures_total", {"step": "sites"}) or 0) > failures)
        assert site() == "new-site"
    finally:
        stage.close()


def test_a_pipeline_refuses_a_chain_without_windows() -> None:
    from consumer.config import Settings
    from consumer.pipeline import ShardPipeline

    with pytest.raises(ValueError, match="needs windows"):
        ShardPipeline(Settings(), "s", None, None,  # type: ignore[arg-type]
                      transform=TransformStage(Chain(), CONTRACT))
