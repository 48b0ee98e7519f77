"""Property tests: the decoder against a json.loads oracle, and totality on arbitrary bytes."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.contract import Contract, TsFormat
from consumer.records.decode import decode_batch
from consumer.records.model import Event, Position, RawRecord, Rejected

CONTRACT = Contract()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

keys = st.text(min_size=1, max_size=12).filter(
    lambda s: not any(0xD800 <= ord(c) < 0xE000 for c in s)
)
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**53), max_value=2**53),
)
instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[object, int]:
    """A JSON timestamp in one of the accepted spellings, and its expected epoch ms."""
    dt = draw(instants)
    ms = (dt - EPOCH) // timedelta(milliseconds=1)
    kind = draw(st.sampled_from(["ms", "z3", "z6", "plus0", "offset", "nofrac"]))
    if kind == "ms":
        return ms, ms
    if kind == "nofrac":
        dt = dt.replace(microsecond=0)
        return dt.strftime("%Y-%m-%dT%H:%M:%SZ"), (dt - EPOCH) // timedelta(milliseconds=1)
    if kind == "z3":
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z", ms
    if kind == "z6":
        return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), ms
    if kind == "plus0":
        return dt.isoformat(timespec="milliseconds"), ms
    minutes = draw(st.integers(min_value=-23 * 60, max_value=23 * 60))
    local = dt.astimezone(__import__("datetime").timezone(timedelta(minutes=minutes)))
    return local.isoformat(timespec="milliseconds"), ms


extra_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def good_records(draw: st.DrawFn) -> tuple[bytes, tuple[str, str], float, int]:
    dev, metric, value = draw(keys), draw(keys), draw(values)
    ts, ms = draw(timestamps())
    obj: dict[str, object] = {"device_id": dev, "metric": metric, "value": value, "ts": ts}
    extras = draw(
        st.dictionaries(st.text(max_size=6).filter(lambda k: k not in obj), extra_json, max_size=3)
    )
    obj.update(extras)
    items = list(obj.items())
    order = draw(st.permutations(range(len(items))))
    raw = json.dumps(dict(items[i] for i in order), ensure_ascii=draw(st.booleans()))
    return raw.encode(), (dev, metric), float(value), ms


def wrap(datas: list[bytes]) -> list[RawRecord]:
    return [RawRecord(d, "pk", Position(i, 0), 0) for i, d in enumerate(datas)]


@settings(max_examples=200, deadline=None)
@given(st.lists(good_records(), max_size=20))
def test_valid_records_match_oracle(recs: list[tuple[bytes, tuple[str, str], float, int]]) -> None:
    events, rejected = decode_batch(wrap([r[0] for r in recs]), CONTRACT)
    assert rejected == []
    assert len(events) == len(recs)
    for ev, (raw, key, value, ms) in zip(events, recs, strict=True):
        oracle = json.loads(raw)
        assert ev.key == key == (oracle["device_id"], oracle["metric"])
        assert ev.value == value == float(oracle["value"])
        assert ev.ts_ms == ms
        assert ev.record.data == raw


def mutate(raw: bytes, draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["truncate", "flip", "drop_field", "retype", "insert"]))
    if how == "truncate" and raw:
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "flip" and raw:
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1 :]
    obj = json.loads(raw)
    field = draw(st.sampled_from(["device_id", "metric", "value", "ts"]))
    if how == "drop_field":
        del obj[field]
    elif how == "retype":
        obj[field] = draw(extra_json)
    else:
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(st.binary(max_size=4)) + raw[i:]
    return json.dumps(obj).encode()


@st.composite
def mixed_batches(draw: st.DrawFn) -> list[bytes]:
    out = []
    for raw, *_ in draw(st.lists(good_records(), max_size=15)):
        out.append(mutate(raw, draw) if draw(st.booleans()) else raw)
    out += draw(st.lists(st.binary(max_size=40), max_size=5))
    return draw(st.permutations(out))


def expected_ok(raw: bytes) -> bool:
    """Independent oracle for acceptance (not for reasons) of the default contract."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=lambda c: 1 / 0)
    except (ValueError, ZeroDivisionError, RecursionError):
        return False
    if not isinstance(obj, dict):
        return False
    for k in ("device_id", "metric"):
        if not isinstance(obj.get(k), str) or not obj[k]:
            return False
        try:
            obj[k].encode()
        except UnicodeEncodeError:
            return False
    v = obj.get("value")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        if not math.isfinite(float(v)):
            return False
    except OverflowError:
        return False
    ts = obj.get("ts")
    if type(ts) is int:
        return -62_135_596_800_000 <= ts <= 253_402_300_799_999
    if type(ts) is not str:
        return False
    try:
        dt = datetime.fromisoformat(ts)
    except ValueError:
        return False
    return dt.tzinfo is not None and "T" in ts.upper() and len(ts) >= 17


@settings(max_examples=200, deadline=None)
@given(mixed_batches())
def test_any_bytes_end_as_exactly_one_outcome_in_order(datas: list[bytes]) -> None:
    records = wrap(datas)
    events, rejected = decode_batch(records, CONTRACT)
    assert len(events) + len(rejected) == len(records)
    seen = [e.record.position.sequence for e in events]
    bad = [r.record.position.sequence for r in rejected]
    assert seen == sorted(seen) and bad == sorted(bad)
    assert sorted(seen + bad) == list(range(len(records)))
    for r in rejected:
        assert isinstance(r, Rejected) and r.stage in ("decode", "contract") and r.message
        assert r.reason != "internal", r.message
    for e in events:
        assert isinstance(e, Event) and math.isfinite(e.value)
    for i, raw in enumerate(datas):
        if i in seen:
            assert expected_ok(raw), raw
        elif expected_ok(raw):
            # The oracle is looser about ISO spellings than the contract; nothing else.
            reason = next(r for r in rejected if r.record.position.sequence == i).reason
            assert reason == "bad_timestamp", (raw, reason)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10), st.sampled_from(["auto", "iso", "epoch_ms"]))
def test_arbitrary_bytes_never_raise_nested_contract(datas: list[bytes], fmt: TsFormat) -> None:
    c = Contract(
        key_fields=("a.b", "c"), ts_field="t.u", value_field="v", ts_format=fmt, max_depth=3
    )
    events, rejected = decode_batch(wrap(datas), c)
    assert len(events) + len(rejected) == len(datas)
