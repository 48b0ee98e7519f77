"""Unit tests for the record contract and decoder: one case per rejection reason, edges."""

from __future__ import annotations

import gc
import json

import pytest

from consumer.records.contract import Contract
from consumer.records.decode import KPL_MAGIC, TimestampError, decode_batch, parse_timestamp
from consumer.records.model import Event, Position, RawRecord, Rejected


def rec(data: bytes | dict[str, object], seq: int = 1) -> RawRecord:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return RawRecord(raw, "pk", Position(seq, 0), 0)


GOOD = {"device_id": "dev-1", "metric": "temp", "value": 3.25, "ts": "2026-11-26T09:59:59.337Z"}


def one(data: bytes | dict[str, object], contract: Contract | None = None) -> Event | Rejected:
    events, rejected = decode_batch([rec(data)], contract or Contract())
    assert len(events) + len(rejected) == 1
    return events[0] if events else rejected[0]


def test_good_record_decodes_all_fields() -> None:
    e = one(GOOD)
    assert isinstance(e, Event)
    assert e.key == ("dev-1", "temp")
    assert e.ts_ms == 1_795_687_199_337
    assert e.value == 3.25
    assert e.record.data == json.dumps(GOOD).encode()


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.5Z", 500),
        ("1970-01-01T00:00:00.123456789Z", 123),
        ("1970-01-01T00:00:01+00:00", 1000),
        ("1970-01-01T01:00:01+01:00", 1000),
        ("1969-12-31T23:00:01-01:00", 1000),
        ("1970-01-01T00:01Z", 60_000),
        ("2024-02-29T12:00:00.000z", 1_709_208_000_000),
        (1_709_208_000_000, 1_709_208_000_000),
    ],
)
def test_parse_timestamp_accepts(ts: object, expected: int) -> None:
    assert parse_timestamp(ts, "auto") == expected


@pytest.mark.parametrize(
    ("ts", "fmt", "reason"),
    [
        ("2026-11-26T09:59:59", "auto", "bad_timestamp"),  # no offset: ambiguous
        ("2026-02-30T00:00:00Z", "auto", "bad_timestamp"),
        ("2026-11-26T09:59:60Z", "auto", "bad_timestamp"),
        ("2026-11-26T24:00:00Z", "auto", "bad_timestamp"),
        ("2026-11-26 09:59:59Z", "auto", "bad_timestamp"),
        ("2026-11-26T09:59:٣٣Z", "auto", "bad_timestamp"),  # non-ASCII digits
        ("2026-11-26T09:59:59.123Zjunk", "auto", "bad_timestamp"),
        ("", "auto", "bad_timestamp"),
        (10**20, "auto", "bad_timestamp"),
        (1.5, "auto", "wrong_type"),
        (True, "auto", "wrong_type"),
        (None, "auto", "wrong_type"),
        (5, "iso", "wrong_type"),
        ("2026-11-26T09:59:59Z", "epoch_ms", "wrong_type"),
    ],
)
def test_parse_timestamp_rejects(ts: object, fmt: str, reason: str) -> None:
    with pytest.raises(TimestampError) as err:
        parse_timestamp(ts, fmt)
    assert err.value.reason == reason


def test_epoch_and_iso_agree() -> None:
    iso = one(GOOD)
    ms = one({**GOOD, "ts": 1_795_687_199_337})
    assert isinstance(iso, Event) and isinstance(ms, Event)
    assert iso.ts_ms == ms.ts_ms


@pytest.mark.parametrize(
    ("data", "stage", "reason", "names"),
    [
        (KPL_MAGIC + b"\x00garbage", "decode", "kpl_checksum", "KPL"),
        (b'{"device_id": "\xff"}', "decode", "invalid_utf8", "byte"),
        (b'{"device_id": ', "decode", "invalid_json", "JSON"),
        (
            b'{"device_id": "a", "metric": "m", "value": NaN, "ts": 1}',
            "decode",
            "invalid_json",
            "NaN",
        ),
        (b"[1, 2]", "decode", "not_an_object", "array"),
        (b'"str"', "decode", "not_an_object", "string"),
        ({k: v for k, v in GOOD.items() if k != "metric"}, "contract", "missing_field", "metric"),
        ({**GOOD, "device_id": 7}, "contract", "wrong_type", "device_id"),
        ({**GOOD, "device_id": ""}, "contract", "empty_field", "device_id"),
        ({**GOOD, "value": True}, "contract", "wrong_type", "value"),
        ({**GOOD, "value": "3"}, "contract", "wrong_type", "value"),
        (
            b'{"device_id": "a", "metric": "m", "value": -1e400, "ts": 1}',
            "contract",
            "non_finite",
            "value",
        ),
        ({**GOOD, "ts": "yesterday"}, "contract", "bad_timestamp", "ts"),
        ({**GOOD, "ts": 1.5e12}, "contract", "wrong_type", "ts"),
        ({**GOOD, "device_id": "\ud800"}, "contract", "invalid_utf8", "device_id"),
    ],
)
def test_rejections_name_stage_reason_and_field(
    data: bytes | dict[str, object], stage: str, reason: str, names: str
) -> None:
    r = one(data)
    assert isinstance(r, Rejected), r
    assert (r.stage, r.reason) == (stage, reason)
    assert names in r.message


def test_too_large_and_too_deep() -> None:
    small = Contract(max_record_bytes=50)
    r = one(GOOD, small)
    assert isinstance(r, Rejected) and r.reason == "too_large"
    deep: object = 1
    for _ in range(40):
        deep = {"x": deep}
    r = one({**GOOD, "extra": deep})
    assert isinstance(r, Rejected) and r.reason == "too_deep"
    # Very deep input hits the parser's recursion limit: still a clean rejection.
    r = one(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    assert isinstance(r, Rejected) and r.reason == "too_deep"
    # Brackets inside strings are not nesting.
    e = one({**GOOD, "note": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{{{{{{"})
    assert isinstance(e, Event)


def test_nested_paths_and_single_key() -> None:
    c = Contract(
        key_fields=("payload.device",),
        ts_field="meta.t",
        value_field="payload.v",
        ts_format="epoch_ms",
    )
    e = one({"payload": {"device": "d9", "v": -2}, "meta": {"t": 1000}}, c)
    assert isinstance(e, Event) and (e.key, e.ts_ms, e.value) == (("d9",), 1000, -2.0)
    r = one({"payload": "flat", "meta": {"t": 1000}}, c)
    assert isinstance(r, Rejected) and r.reason == "missing_field" and "payload" in r.message
    r = one({"payload": {"device": "d9", "v": 1}, "meta": {"t": "1970-01-01T00:00:01Z"}}, c)
    assert isinstance(r, Rejected) and r.reason == "wrong_type" and "meta.t" in r.message


def test_flat_custom_fields_and_formats() -> None:
    c = Contract(key_fields=("k",), ts_field="when", value_field="v", ts_format="iso")
    e = one({"k": "a", "when": "1970-01-01T00:00:02Z", "v": 1}, c)
    assert isinstance(e, Event) and (e.key, e.ts_ms) == (("a",), 2000)
    r = one({"k": "a", "when": 2000, "v": 1}, c)
    assert isinstance(r, Rejected) and r.reason == "wrong_type"


def test_batch_order_counts_and_gc_restored() -> None:
    datas: list[bytes | dict[str, object]] = [GOOD, b"x", {**GOOD, "ts": 5}, b"[]", GOOD]
    records = [rec(d, seq=i) for i, d in enumerate(datas)]
    assert gc.isenabled()
    events, rejected = decode_batch(records, Contract())
    assert gc.isenabled()
    assert [e.record.position.sequence for e in events] == [0, 2, 4]
    assert [r.record.position.sequence for r in rejected] == [1, 3]
    gc.disable()
    try:
        decode_batch(records, Contract())
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"key_fields": ()}, "key_fields"),
        ({"key_fields": ("a", "a")}, "key_fields"),
        ({"key_fields": ("a..b",)}, "key_fields"),
        ({"ts_field": ""}, "ts_field"),
        ({"value_field": ".v"}, "value_field"),
        ({"ts_format": "unix"}, "ts_format"),
        ({"max_depth": 0}, "max_depth"),
        ({"max_depth": 1, "ts_field": "a.b"}, "max_depth"),
        ({"max_record_bytes": 0}, "max_record_bytes"),
    ],
)
def test_contract_validation_names_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Contract(**kwargs)  # type: ignore[arg-type]
