"""Schema versions and drift in the decode stage.

Properties: a versioned contract decodes each record exactly as the single contract of that
record's version does (with a wrong type on a required field reported as type_change), and
schema_drift counts what a set-based oracle over the flattened record counts. Units: the
quarantine reasons, the settings' JSON form, the fast paths with and without versions.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.config import load_settings, to_env
from consumer.pipeline import contract_from
from consumer.records.contract import Contract, SchemaVersion, parse_versions
from consumer.records.decode import decode_batch, decode_columns, schema_drift
from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.transform.stage import decode_with_fields

TS = "2026-03-01T12:00:05.250Z"
TS_MS = 1_772_366_405_250

# The layouts under test, written as the settings write them. Each version is decoded by
# the single contract built from the same dict (SINGLE), independently of parse_versions.
LAYOUTS: dict[str, dict[str, Any]] = {
    "by_field": {
        "version_field": "schema_version",
        "versions": [
            {"name": "v1", "when": 1, "value_field": "temp",
             "fields": {"device_id": "string", "metric": "string", "ts": "string",
                        "temp": "number", "unit": "string", "meta": "object"}},
            {"name": "v2", "when": [2, "2"], "ts_field": "time", "ts_format": "epoch_ms"},
            {"name": "v3", "when": 3, "key_fields": ["payload.device", "metric"],
             "value_field": "payload.reading",
             "fields": {"payload.device": "string", "payload.reading": "number",
                        "payload.ok": "boolean", "metric": "string", "ts": "integer",
                        "tags": "array"}},
        ],
    },
    "by_presence": {
        "version_field": "",
        "versions": [
            {"name": "old", "present": "temp", "value_field": "temp", "ts_format": "iso"},
            {"name": "new", "fields": {"device_id": "string", "metric": "string",
                                       "ts": "string", "value": "number", "note": "null"}},
        ],
    },
}


def versioned(layout: dict[str, Any]) -> Contract:
    vs = parse_versions(json.dumps(layout["versions"]), Contract(), layout["version_field"])
    return Contract(version_field=layout["version_field"], versions=vs)


def single(version: dict[str, Any]) -> Contract:
    fields = version.get("fields", {})
    ts_field = version.get("ts_field", "ts")
    fmt = version.get("ts_format", {"string": "iso", "integer": "epoch_ms"}.get(
        fields.get(ts_field, ""), "auto"))
    return Contract(key_fields=tuple(version.get("key_fields", ("device_id", "metric"))),
                    ts_field=ts_field, value_field=version.get("value_field", "value"),
                    ts_format=fmt)


CONTRACTS = {name: versioned(layout) for name, layout in LAYOUTS.items()}


def rec(obj: Any, i: int = 0) -> RawRecord:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return RawRecord(data, "pk", Position(i, 0), 0)


# --- the oracle: version choice and drift, written plainly ----------------------------------


def jtype(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(v)]


def accepts(types: set[str], v: object) -> bool:
    return jtype(v) in types or ("number" in types and jtype(v) == "integer")


def flatten(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in obj.items():
        out[(*prefix, k)] = v
        if isinstance(v, dict):
            out |= flatten(v, (*prefix, k))
    return out


def oracle_version(layout: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any] | None:
    flat = flatten(obj)
    for v in layout["versions"]:
        when = v.get("when", [])
        when = when if isinstance(when, list) else [when]
        got = flat.get(tuple(layout["version_field"].split(".")), object())
        if when and not any(type(got) is type(w) and got == w for w in when):
            continue
        if "present" in v and tuple(v["present"].split(".")) not in flat:
            continue
        return v
    return None


def required_types(v: dict[str, Any]) -> dict[tuple[str, ...], set[str]]:
    c = single(v)
    ts = {"iso": {"string"}, "epoch_ms": {"integer"}}.get(c.ts_format, {"string", "integer"})
    out = {tuple(k.split(".")): {"string"} for k in c.key_fields}
    return out | {tuple(c.ts_field.split(".")): ts, tuple(c.value_field.split(".")): {"number"}}


def oracle_drift(layout: dict[str, Any], objs: list[Any]) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for obj in objs:
        v = oracle_version(layout, obj) if isinstance(obj, dict) else None
        if v is None:
            continue
        flat, req = flatten(obj), required_types(v)
        for path, types in req.items():
            if path in flat and not accepts(types, flat[path]):
                out[(".".join(path), "type_change")] += 1
        if not v.get("fields"):
            continue
        declared = {tuple(p.split(".")): {t} for p, t in v["fields"].items()}
        known = set(declared) | set(req)
        known |= {tuple(p.split(".")) for p in (layout["version_field"], v.get("present", ""))
                  if p}
        parents = {k[:i] for k in known for i in range(1, len(k))}
        for path, value in flat.items():
            if any(path[:i] not in parents or path[:i] in known for i in range(1, len(path))):
                continue  # not reached: under an unknown or a declared (leaf) field
            if path in known:
                mistyped = path in declared and path not in req and not accepts(
                    declared[path], value)
            else:  # a parent of declared fields must be an object; anything else is unknown
                mistyped = path in parents and not isinstance(value, dict)
                if path not in parents:
                    out[(".".join(path), "unknown_field")] += 1
            if mistyped:
                out[(".".join(path), "type_change")] += 1
    return out


# --- generated records ------------------------------------------------------------------------

names = st.sampled_from(["device_id", "metric", "unit", "meta", "extra", "x", "payload", "tags",
                         "note", "temp", "value"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=2)
                        | st.dictionaries(names, inner, max_size=2), max_leaves=4)


def put(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for seg in parents:
        if seg in obj and not isinstance(obj[seg], dict):
            return  # a parent that is not an object stays: that is drift too
        obj = obj.setdefault(seg, {})
    obj[last] = value


@st.composite
def layout_records(draw: st.DrawFn, layout: dict[str, Any]) -> Any:
    """A record of one of the layout's versions, then maybe damaged: a required field
    missing or of another type, extra or mistyped fields, another selector, or not JSON."""
    v = draw(st.sampled_from(layout["versions"]))
    c = single(v)
    obj: dict[str, Any] = {}
    if "when" in v:
        when = v["when"] if isinstance(v["when"], list) else [v["when"]]
        obj[layout["version_field"]] = draw(st.sampled_from(when))
    for k in c.key_fields:
        put(obj, k, draw(st.sampled_from(["d1", "d2", "t"])))
    put(obj, c.value_field, draw(st.sampled_from([1, 2.5, -3.25])))
    put(obj, c.ts_field, TS_MS if c.ts_format == "epoch_ms" else TS)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["missing", "retype", "extra", "selector", "declared"]))
        if kind == "missing":
            obj.pop(draw(st.sampled_from(sorted(obj))), None)
        elif kind == "retype":
            path = draw(st.sampled_from(list(c.all_paths)))
            put(obj, path, draw(scalars))
        elif kind == "extra":
            put(obj, draw(names), draw(anything))
        elif kind == "selector" and layout["version_field"]:
            obj[layout["version_field"]] = draw(st.sampled_from([1, 2, "2", 3, "3", True, 9]))
        elif kind == "declared" and v.get("fields"):
            put(obj, draw(st.sampled_from(sorted(v["fields"]))), draw(anything))
    if draw(st.integers(0, 19)) == 0:
        return b'{"not json'
    return obj


def expected(layout: dict[str, Any], r: RawRecord) -> Event | Rejected:
    """The record through its own version's single contract (type_change for wrong_type)."""
    try:
        obj = json.loads(r.data)
    except ValueError:
        obj = None
    v = oracle_version(layout, obj) if isinstance(obj, dict) else None
    if v is None:
        events, rejected = decode_batch([r], Contract())  # decode-stage reasons only
        if isinstance(obj, dict):
            return Rejected(r, "contract", "unknown_version", "")
        return rejected[0]
    events, rejected = decode_batch([r], single(v))
    if events:
        return events[0]
    bad = rejected[0]
    reason = "type_change" if bad.reason == "wrong_type" else bad.reason
    return Rejected(r, bad.stage, reason, "")


def content(out: Event | Rejected) -> tuple[Any, ...]:
    if isinstance(out, Event):
        return ("event", out.key, out.ts_ms, out.value, out.record)
    return ("rejected", out.record, out.stage, out.reason)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_versioned_decode_is_each_version_s_single_contract(name: str, data: st.DataObject) -> None:
    layout, contract = LAYOUTS[name], CONTRACTS[name]
    objs = data.draw(st.lists(layout_records(layout), max_size=12))
    records = [rec(o, i) for i, o in enumerate(objs)]
    events, rejected = decode_batch(records, contract)
    want = [expected(layout, r) for r in records]
    assert [content(e) for e in events] == [content(w) for w in want if isinstance(w, Event)]
    assert [content(r) for r in rejected] == [content(w) for w in want
                                             if isinstance(w, Rejected)]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_drift_counts_equal_the_oracle(name: str, data: st.DataObject) -> None:
    layout = LAYOUTS[name]
    objs = data.draw(st.lists(layout_records(layout), max_size=12))
    got = schema_drift([rec(o, i) for i, o in enumerate(objs)], CONTRACTS[name])
    assert got == oracle_drift(layout, [o for o in objs if not isinstance(o, bytes)])


# --- the example: v1 `temp` and v2 `value` are the same Event -------------------------


def v1_and_v2(v1_temp: float, v2_value: float) -> list[RawRecord]:
    """A v1 record (`temp`, ISO time) and a v2 one (`value`, epoch ms) of the same reading."""
    return [rec({"schema_version": 1, "device_id": "d1", "metric": "t", "ts": TS,
                 "temp": v1_temp, "unit": "C"}),
            rec({"schema_version": 2, "device_id": "d1", "metric": "t", "time": TS_MS,
                 "value": v2_value}, 1)]


def test_a_v1_temp_and_a_v2_value_record_decode_to_the_same_event() -> None:
    c = CONTRACTS["by_field"]
    v1, v2 = v1_and_v2(21.5, 21.5)
    events, rejected = decode_batch([v1, v2], c)
    assert rejected == []
    assert [(e.key, e.ts_ms, e.value) for e in events] == [(("d1", "t"), TS_MS, 21.5)] * 2
    assert schema_drift([v1, v2], c) == Counter()


def test_the_transform_stage_s_decoder_reads_versioned_records_as_decode_batch_does() -> None:
    # The column path (decode_fields) has no versioned shape: it must hand such a batch to
    # decode_batch, not fail (it once raised AttributeError on every versioned batch).
    c = CONTRACTS["by_field"]
    v1, v2 = v1_and_v2(21.5, 22.5)
    events, rejected, fields = decode_with_fields([v1, v2], c)
    assert (events, rejected) == decode_batch([v1, v2], c)
    assert [e.value for e in events] == [21.5, 22.5]
    assert fields is None


def test_the_example_from_a_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[contract]\nversion_field = \"schema_version\"\nversions = '''\n"
                    '[{"name": "v1", "when": 1, "value_field": "temp"},\n'
                    ' {"name": "v2", "when": 2}]\n'
                    "'''\n")
    c = contract_from(load_settings(path, env={}))
    assert c.version_field == "schema_version"
    assert [(v.name, v.value_field, v.when) for v in c.versions] == [
        ("v1", "temp", (1,)), ("v2", "value", (2,))]
    body = {"device_id": "d", "metric": "m", "ts": TS}
    events, _ = decode_batch([rec(body | {"schema_version": 1, "temp": 4}),
                              rec(body | {"schema_version": 2, "value": 4})], c)
    assert [(e.key, e.ts_ms, e.value) for e in events] == [(("d", "m"), TS_MS, 4.0)] * 2


def test_versions_reach_the_processors_through_their_environment(tmp_path: Path) -> None:
    """The supervisor hands its settings to the processors as AETHERSTREAM_* variables."""
    path = tmp_path / "s.toml"
    text = json.dumps(LAYOUTS["by_field"]["versions"], indent=1)
    path.write_text(f"[contract]\nversion_field = 'schema_version'\nversions = '''\n{text}\n'''\n")
    loaded = load_settings(path, env={})
    again = load_settings(None, env=to_env(loaded))
    assert again == loaded
    assert contract_from(again) == CONTRACTS["by_field"]


# --- quarantine reasons -----------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field", "expected_type", "seen"), [
    ({"value": "21.5"}, "value", "number", "string"),
    ({"value": True}, "value", "number", "boolean"),
    ({"device_id": 7}, "device_id", "string", "integer"),
    ({"metric": None}, "metric", "string", "null"),
    ({"time": "2026-03-01T12:00:05Z"}, "time", "integer", "string"),
    ({"time": 1.5e12}, "time", "integer", "number"),
])
def test_a_type_change_on_a_required_field_is_quarantined_naming_field_and_types(
    change: dict[str, Any], field: str, expected_type: str, seen: str
) -> None:
    body = {"schema_version": 2, "device_id": "d1", "metric": "t", "time": TS_MS, "value": 1.0}
    r = rec(body | change)
    events, rejected = decode_batch([r], CONTRACTS["by_field"])
    assert events == []
    assert [(q.stage, q.reason) for q in rejected] == [("contract", "type_change")]
    assert rejected[0].message == (f"field {field!r} changed type (schema version 'v2'): "
                                   f"expected {expected_type}, got {seen}")
    assert schema_drift([r], CONTRACTS["by_field"]) == Counter({(field, "type_change"): 1})


def test_auto_ts_format_expects_either_spelling() -> None:
    c = CONTRACTS["by_presence"]  # "new" declares ts a string: narrowed to iso
    body = {"device_id": "d", "metric": "m", "value": 1}
    _, rejected = decode_batch([rec(body | {"ts": TS_MS})], c)
    assert rejected[0].message.endswith("expected string, got integer")
    plain = Contract(version_field="", versions=(
        SchemaVersion("any", ("device_id", "metric"), "ts", "value"),))
    _, rejected = decode_batch([rec(body | {"ts": [1]})], plain)
    assert rejected[0].message == ("field 'ts' changed type (schema version 'any'): expected "
                                   "string or integer, got array")


def test_a_record_of_no_declared_version_is_quarantined_naming_the_selector() -> None:
    body = {"device_id": "d1", "metric": "t", "ts": TS, "value": 1.0}
    c = CONTRACTS["by_field"]
    events, rejected = decode_batch([rec(body | {"schema_version": "1"}), rec(body)], c)
    assert events == []
    assert [(q.stage, q.reason) for q in rejected] == [("contract", "unknown_version")] * 2
    choices = ("no schema version matches: v1 (schema_version in [1]), v2 (schema_version in "
               "[2, '2']), v3 (schema_version in [3])")
    assert rejected[0].message == f"field 'schema_version' is '1'; {choices}"
    assert rejected[1].message == f"field 'schema_version' is missing; {choices}"


def test_other_reasons_are_unchanged_by_versions() -> None:
    c = CONTRACTS["by_field"]
    base = {"schema_version": 1, "device_id": "d1", "metric": "t", "ts": TS, "temp": 1.0}
    huge = json.dumps(base | {"temp": 7.0}).encode().replace(b"7.0", b"1e400")
    cases = [b"\xff", b"[1]", huge,
             json.dumps({k: v for k, v in base.items() if k != "temp"}).encode(),
             json.dumps(base | {"device_id": ""}).encode(),
             json.dumps(base | {"ts": "2026-03-01T12:00:05"}).encode()]
    _, rejected = decode_batch([rec(d, i) for i, d in enumerate(cases)], c)
    assert [(q.stage, q.reason) for q in rejected] == [
        ("decode", "invalid_utf8"), ("decode", "not_an_object"), ("contract", "non_finite"),
        ("contract", "missing_field"), ("contract", "empty_field"),
        ("contract", "bad_timestamp")]


# --- drift details ----------------------------------------------------------------------------


def test_drift_names_the_outermost_unknown_field_and_mistyped_parents() -> None:
    c = CONTRACTS["by_field"]
    v3 = {"schema_version": 3, "metric": "t", "ts": TS_MS,
          "payload": {"device": "d", "reading": 2, "ok": "yes", "new": {"a": 1}},
          "tags": {"a": 1}, "extra": {"deep": {"er": 1}}}
    v1 = {"schema_version": 1, "device_id": "d", "metric": "t", "ts": TS, "temp": 1,
          "meta": {"anything": [1]}, "unit": 5}
    got = schema_drift([rec(v3), rec(v1, 1), rec(v3 | {"payload": [1]}, 2)], c)
    assert got == Counter({("payload.ok", "type_change"): 1, ("payload.new", "unknown_field"): 1,
                           ("tags", "type_change"): 2, ("extra", "unknown_field"): 2,
                           ("unit", "type_change"): 1, ("payload", "type_change"): 1})


def test_a_version_without_declared_fields_reports_only_required_type_changes() -> None:
    r = rec({"schema_version": 2, "device_id": "d", "metric": "t", "time": TS_MS, "value": 1,
             "anything": {"goes": True}})
    assert schema_drift([r], CONTRACTS["by_field"]) == Counter()


def test_without_versions_drift_is_empty_and_the_fast_paths_are_kept() -> None:
    records = [rec({"device_id": "d", "metric": "m", "ts": TS, "value": i}, i) for i in range(3)]
    assert schema_drift(records, Contract()) == Counter()
    assert decode_columns(records, Contract()) is not None
    # With versions the columnar path declines, and decode_batch decodes per version.
    one = Contract(versions=(SchemaVersion("v", ("device_id", "metric"), "ts", "value"),))
    assert decode_columns(records, one) is None
    assert decode_batch(records, one) == decode_batch(records, Contract())


# --- the settings' JSON form ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "problem"), [
    ("{}", "must be a JSON array of objects"),
    ("[{", "not JSON"),
    ('[{"when": 1}]', "versions[0]: needs a name"),
    ('[{"name": "v 1"}]', "version name 'v 1'"),
    ('[{"name": "v1", "when": true}]', "when values must be strings or integers"),
    ('[{"name": "v1", "key_fields": "device_id"}]', "key_fields must be an array"),
    ('[{"name": "v1", "fields": {"a": "string", "a.b": "number"}}]', "path inside another"),
    ('[{"name": "v1", "ts_format": "iso", "fields": {"ts": "integer"}}]',
     "field 'ts' is declared integer, but decode takes it only as string"),
    ('[{"name": "v1", "present": "a..b"}]', "present: field path 'a..b' has an empty segment"),
])
def test_bad_versions_are_refused_naming_the_version_and_key(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        vs = parse_versions(text, Contract(), "schema_version")
        Contract(version_field="schema_version", versions=vs)
    assert problem in str(err.value)


def test_contract_checks_versions_given_in_code() -> None:
    v = SchemaVersion("v", ("device_id",), "ts", "value")
    with pytest.raises(ValueError, match="names must be unique"):
        Contract(versions=(v, v))
    with pytest.raises(ValueError, match="must be the last version"):
        Contract(versions=(v, SchemaVersion("w", ("k",), "ts", "value", present="k")))
    with pytest.raises(ValueError, match="max_depth"):
        deep = SchemaVersion("d", ("k",), "ts", "value", present="k",
                             fields=(("a." * 5 + "b", "string"),))
        Contract(max_depth=4, versions=(deep,))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6)
    | st.sampled_from(["v1", "ts", "temp", "string", "number", "integer", "a.b", "iso"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8)
field_names = st.sampled_from(["ts", "value", "temp", "device_id", "a", "a.b", ""])
version_objects = st.fixed_dictionaries(
    {"name": st.sampled_from(["v1", "v2", "bad name", 3])},
    optional={"when": json_values, "present": json_values | field_names,
              "key_fields": json_values | st.lists(field_names, max_size=3),
              "ts_field": json_values | field_names, "value_field": json_values | field_names,
              "ts_format": json_values, "fields": json_values
              | st.dictionaries(field_names, json_values, max_size=4),
              "other": json_values})


@settings(max_examples=300, deadline=None)
@given(items=st.lists(version_objects | json_values, max_size=3))
def test_any_json_is_a_valid_versions_list_or_a_value_error(items: list[Any]) -> None:
    """Settings errors are reported, never a traceback: only ValueError comes out."""
    try:
        vs = parse_versions(json.dumps(items), Contract(), "schema_version")
        Contract(version_field="schema_version" if vs else "", versions=vs)
    except ValueError:
        pass
