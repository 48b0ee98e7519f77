"""Each transform step and the [[transform]] settings, by example: expected values are
worked out by hand here, not computed by the code under test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from consumer.config import ConfigError
from consumer.records.model import Position, RawRecord
from consumer.transform import ROUTE_FIELD, Chain, Reject, TRecord
from consumer.transform.config import parse_chain
from consumer.transform.lookup import LookupTable, TableError, parse_csv, parse_ndjson
from consumer.transform.tables import LookupSource
from consumer.transform.units import unit_converter

REC = RawRecord(b'{"x":1}', "pk-1", Position(42, 3), 1_700_000_000_000)


def table(src: LookupSource) -> LookupTable:
    return parse_csv(b"id,site\nd1,plant-a\n", src.key, src.source)


def chain(*tables: dict[str, Any]) -> Chain:
    return parse_chain(list(tables), "test", Path("/tmp"), table).chain


def run(c: Chain, fields: dict[str, Any]) -> Any:
    """The one record's fields after the chain, or (reason, message) if rejected, or the
    filtered counts."""
    out = c.apply([TRecord(fields, REC)])
    if out.records:
        return out.records[0].fields
    if out.rejected:
        (r,) = out.rejected
        assert r.record is REC and r.stage == "transform"
        return r.reason, r.message
    return out.filtered


def test_rename_moves_fields_and_nested_paths() -> None:
    c = chain({"name": "r", "kind": "rename", "fields": {"dev": "device_id", "m.v": "value"}})
    assert run(c, {"dev": "d1", "m": {"v": 3, "u": "C"}}) == {
        "m": {"u": "C"}, "device_id": "d1", "value": 3}
    assert run(c, {"other": 1}) == {"other": 1}  # not required: absent fields are fine
    strict = chain({"name": "r", "kind": "rename", "fields": {"dev": "d"}, "required": True})
    assert run(strict, {}) == ("r:missing_field", "transform step 'r': no field 'dev'")


def test_a_write_through_a_non_object_is_rejected_not_overwritten() -> None:
    for table in ({"name": "w", "kind": "set", "values": {"m.v": 1}},
                  {"name": "w", "kind": "rename", "fields": {"a": "m.v"}},
                  {"name": "w", "kind": "derive", "field": "m.v", "expr": "a"},
                  {"name": "w", "kind": "convert", "field": "a", "type": "str", "into": "m.v"}):
        reason, message = run(chain(table), {"a": 1, "m": "text"})
        assert reason == "w:path_conflict" and "'m' holds str" in message, table


def test_drop_and_set() -> None:
    c = chain({"name": "d", "kind": "drop", "fields": ["a", "n.b", "absent"]},
              {"name": "s", "kind": "set", "values": {"env": "prod", "n.c": 2}})
    assert run(c, {"a": 1, "n": {"b": 2, "x": 3}, "k": 4}) == {
        "n": {"x": 3, "c": 2}, "k": 4, "env": "prod"}


def test_derive_with_cel_numbers_as_doubles() -> None:
    c = chain({"name": "c", "kind": "derive", "field": "temp_c",
               "expr": "(temp_f - 32.0) * 5.0 / 9.0"})
    assert run(c, {"temp_f": 212}) == {"temp_f": 212, "temp_c": 100.0}  # an int works too
    assert run(c, {"temp_f": 50.0})["temp_c"] == 10.0
    assert run(c, {}) == ("c:missing_field", "transform step 'c': no field 'temp_f'")
    reason, message = run(c, {"temp_f": "hot"})
    assert reason == "c:expr_error" and "string - float" in message
    inf = chain({"name": "i", "kind": "derive", "field": "r", "expr": "1.0 / x"})
    assert run(inf, {"x": 0})[0] == "i:non_finite"
    for expr in ('timestamp("2026-01-01T00:00:00Z")', 'b"ab"', "{1: 2}", "[1.0, 1.0 / 0.0]"):
        odd = chain({"name": "j", "kind": "derive", "field": "r", "expr": expr})
        assert run(odd, {})[0] == "j:not_json", expr
    nested = chain({"name": "n", "kind": "derive", "field": "out.k",
                    "expr": "size(tags) > 1 ? tags[0] : 'none'"})
    assert run(nested, {"tags": ["a", "b"]}) == {"tags": ["a", "b"], "out": {"k": "a"}}


def test_convert_units_and_types() -> None:
    c = chain({"name": "u", "kind": "convert", "field": "t", "from": "degF", "to": "degC",
               "into": "t_c"},
              {"name": "n", "kind": "convert", "field": "count", "type": "int"})
    out = run(c, {"t": 212, "count": "17"})
    assert out["t_c"] == pytest.approx(100.0) and out["count"] == 17 and out["t"] == 212
    assert run(c, {"t": 32, "count": 2.5})[0] == "n:convert_error"  # a fraction is refused
    assert run(c, {"t": "x"})[0] == "u:convert_error"
    assert run(c, {"t": None}) == {"t": None}  # null counts as missing; not required
    assert unit_converter("K", "degC")(0) == pytest.approx(-273.15)
    assert unit_converter("mi", "km")(1) == pytest.approx(1.609344)
    assert unit_converter("km/h", "m/s")(36) == pytest.approx(10.0)
    assert unit_converter("degC", "degF")(-40) == pytest.approx(-40.0)


def test_convert_type_rules() -> None:
    def conv(kind: str, value: Any) -> Any:
        c = chain({"name": "x", "kind": "convert", "field": "v", "type": kind})
        out = run(c, {"v": value})
        return out["v"] if isinstance(out, dict) else out[0]

    assert [conv("float", v) for v in (3, "2.5", " 1e3 ", True, "nan")] == [
        3.0, 2.5, 1000.0, "x:convert_error", "x:convert_error"]
    assert [conv("int", v) for v in (3.0, " 12 ", False, "1.5")] == [
        3, 12, "x:convert_error", "x:convert_error"]
    assert [conv("str", v) for v in (True, 12, 1.5, [1])] == ["true", "12", "1.5",
                                                            "x:convert_error"]
    assert [conv("bool", v) for v in ("Yes", 0, "false", 2)] == [True, False, False,
                                                               "x:convert_error"]


def test_filter_keeps_true_counts_false_rejects_non_bool() -> None:
    c = chain({"name": "warm", "kind": "filter", "expr": "t > 20.0"})
    assert run(c, {"t": 25}) == {"t": 25}
    assert run(c, {"t": 20}) == {"warm": 1}
    bad = chain({"name": "b", "kind": "filter", "expr": "t"})
    assert run(bad, {"t": 1})[0] == "b:not_a_bool"


def test_lookup_adds_columns() -> None:
    c = chain({"name": "s", "kind": "lookup", "source": "t.csv", "key": "dev",
               "table_key": "id", "prefix": "x_"})
    assert run(c, {"dev": "d1"}) == {"dev": "d1", "x_site": "plant-a"}
    assert run(c, {"dev": "d2"}) == {"dev": "d2"}  # on_miss = keep (the default)


def test_route_accumulates_names_once_in_order() -> None:
    c = chain({"name": "r1", "kind": "route", "to": ["per_device", "all"]},
              {"name": "r2", "kind": "route", "to": ["all", "hot"], "when": "t > 30.0"})
    assert run(c, {"t": 35})[ROUTE_FIELD] == ["per_device", "all", "hot"]
    assert run(c, {"t": 5})[ROUTE_FIELD] == ["per_device", "all"]
    assert run(c, {"t": 5, ROUTE_FIELD: "x"})[0] == "r1:bad_route_field"


def bad_plugin(batch: list[dict[str, Any]]) -> list[Any]:
    if any(f.get("boom") for f in batch):
        raise ValueError("cannot")
    return [None if f.get("skip") else {**f, "ok": 1} for f in batch]


def short_plugin(batch: list[dict[str, Any]]) -> list[Any]:
    return batch[1:]


def test_plugin_batch_with_one_bad_record() -> None:
    c = chain({"name": "p", "kind": "plugin", "callable": f"{__name__}:bad_plugin"})
    recs = [TRecord({"i": i, "boom": i == 1, "skip": i == 2},
                    RawRecord(b"", "", Position(i, 0), 0)) for i in range(4)]
    out = c.apply(recs)
    assert [t.fields["i"] for t in out.records] == [0, 3]
    assert [(r.record.position.sequence, r.reason) for r in out.rejected] == [(1, "p:plugin_error")]
    assert "ValueError: cannot" in out.rejected[0].message
    assert out.filtered == {"p": 1}
    short = chain({"name": "s", "kind": "plugin", "callable": f"{__name__}:short_plugin"})
    assert [r.reason for r in short.apply(recs[:2]).rejected] == ["s:plugin_contract"] * 2


def test_plugin_from_a_file_next_to_the_settings(tmp_path: Path) -> None:
    (tmp_path / "plug.py").write_text(
        "def up(batch):\n    return [{k.upper(): v for k, v in f.items()} for f in batch]\n")
    c = parse_chain([{"name": "p", "kind": "plugin", "callable": "plug.py:up"}], "test",
                    tmp_path, table).chain
    assert run(c, {"a": 1}) == {"A": 1}
    assert Reject("r", "m") == Reject("r", "m")


@pytest.mark.parametrize(("tables", "fragment"), [
    ([{"kind": "drop", "fields": ["a"]}], "transform[0]: name: needs a name"),
    ([{"name": "a", "kind": "drop", "fields": ["x"]}, {"name": "a", "kind": "drop",
                                                       "fields": ["y"]}],
     "transform[1] 'a': name: names must be unique"),
    ([{"name": "a", "kind": "explode"}], "transform[0] 'a': kind: must be one of rename"),
    ([{"name": "a", "kind": "derive", "field": "x", "expr": "(1 +"}],
     "transform[0] 'a': expr: not a CEL expression"),
    ([{"name": "a", "kind": "derive", "field": "x", "expr": "1", "when": "y"}],
     "transform[0] 'a': when: unknown for kind 'derive'"),
    ([{"name": "a", "kind": "convert", "field": "x", "from": "degC", "to": "km"}],
     "transform[0] 'a': from/to: cannot convert degC (temperature) to km (length)"),
    ([{"name": "a", "kind": "convert", "field": "x", "type": "decimal"}],
     "transform[0] 'a': type: must be one of int, float, str, bool"),
    ([{"name": "a", "kind": "drop", "fields": ["a..b"]}], "fields: must be a dotted field path"),
    ([{"name": "a", "kind": "lookup", "source": "t.csv", "key": "k", "on_miss": "default"}],
     "defaults: on_miss = 'default' needs a defaults table"),
    ([{"name": "a", "kind": "lookup", "source": "t.csv", "key": "k", "refresh_s": -1}],
     "refresh_s: must be a number of seconds >= 0"),
    ([{"name": "a", "kind": "lookup", "source": "t.csv", "key": "dev"}],
     "source: /tmp/t.csv: no column 'dev' in the header"),
    ([{"name": "a", "kind": "plugin", "callable": "no_such_module_x:f"}],
     "callable: cannot import 'no_such_module_x'"),
    ([{"name": "a", "kind": "plugin", "callable": "json"}], "callable: must be 'module:function'"),
    ([{"name": "a", "kind": "route", "to": []}], "to: must be a non-empty list of strings"),
])
def test_bad_steps_are_named_with_key_rule_and_source(tables: list[Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_chain(tables, "file prod.toml", Path("/tmp"), table)
    (line,) = info.value.problems
    assert fragment in line and line.endswith("(from file prod.toml)")


def test_every_bad_step_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_chain([{"name": "a", "kind": "x"}, {"name": "b", "kind": "filter", "expr": ")"}],
                    "test", Path("/tmp"), table)
    assert [p.split(":")[0] for p in info.value.problems] == ["transform[0] 'a'",
                                                              "transform[1] 'b'"]


def test_table_parsing_refuses_what_it_cannot_use() -> None:
    ok = parse_ndjson(b'{"id": 7, "site": "a"}\n\n{"id": "x", "site": {"n": 1}}\n', "id", "t")
    assert dict(ok.rows) == {"7": {"site": "a"}, "x": {"site": {"n": 1}}}
    for data, parse, why in [
        (b"id,site\nd1,a\nd1,b\n", parse_csv, "line 3: key 'd1' appears twice"),
        (b"id,site\nd1,a,extra\n", parse_csv, "line 2: not as many cells"),
        (b"id,site\nd1\n", parse_csv, "line 2: not as many cells"),
        (b"site\na\n", parse_csv, "no column 'id'"),
        (b'{"id": 1}\n[1]\n', parse_ndjson, "line 2: not a JSON object"),
        (b'{"id": null}\n', parse_ndjson, "line 1: key column 'id' is missing"),
        (b'{"id": 1\n', parse_ndjson, "line 1: not JSON"),
    ]:
        with pytest.raises(TableError, match=why):
            parse(data, "id", "t")


def test_from_raw_gives_fields_or_the_decode_stage_reasons() -> None:
    from consumer.transform.inputs import from_raw

    def why(data: bytes) -> Any:
        out = from_raw(RawRecord(data, "pk", Position(1, 0), 0))
        return out.fields if isinstance(out, TRecord) else (out.stage, out.reason)

    assert why(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert why(b"\xff\xfe") == ("decode", "invalid_utf8")
    assert why(b'{"a": NaN}') == ("decode", "invalid_json")
    assert why(b'"text"') == ("decode", "not_an_object")
