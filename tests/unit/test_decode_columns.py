"""Property tests: the vectorised ISO paths (_iso_swar, _each_ts) and the resumed decode map
(_decodable) against per-record references."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.contract import Contract
from consumer.records.decode import (
    MAX_MS,
    MIN_MS,
    TimestampError,
    _decodable,
    _each_ts,
    _iso_general,
    _iso_swar,
    decode_batch,
    decode_columns,
)
from consumer.records.model import Position, RawRecord

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Month ends (and a leap day), where a batch spans two months or a day does not exist.
ANCHORS = [
    datetime(2026, 11, 26, 9, 59, 59, tzinfo=UTC),
    datetime(2026, 12, 1, tzinfo=UTC),
    datetime(2024, 3, 1, tzinfo=UTC),
    datetime(2023, 3, 1, tzinfo=UTC),
    datetime(1970, 2, 1, tzinfo=UTC),
    datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC),
]


def z3(dt: datetime) -> str:
    return f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}.{dt.microsecond // 1000:03d}Z"


@st.composite
def batches(draw: st.DrawFn) -> list[str]:
    """Mostly valid "...SS.fffZ" strings near an anchor; some with one character changed."""
    anchor = draw(st.sampled_from(ANCHORS))
    out = []
    for _ in range(draw(st.integers(1, 40))):
        ms = draw(st.integers(-3_000_000, 3_000_000))
        try:
            s = z3(anchor + timedelta(milliseconds=ms))
        except OverflowError:
            s = z3(anchor)
        if draw(st.integers(0, 9)) == 0:
            i = draw(st.integers(0, 23))
            s = s[:i] + draw(st.sampled_from("0123456789:-.TZtz+9 é")) + s[i + 1 :]
        out.append(s)
    return out


def expected(raw: list[str]) -> list[int] | None:
    try:
        return [_iso_general(t) for t in raw]
    except TimestampError:
        return None


@settings(max_examples=500, deadline=None)
@given(batches())
def test_swar_equals_the_per_record_parser_or_declines(raw: list[str]) -> None:
    got = _iso_swar(raw)
    want = expected(raw)
    if got is not None:
        assert got == want
    elif want is not None and all(len(t) == 24 and t[10] == "T" and t[23] == "Z" for t in raw):
        # Declining a valid batch is only allowed for several months or years before 1970.
        assert len({t[:7] for t in raw}) > 1 or raw[0] < "1970"


def test_swar_takes_a_clean_batch() -> None:
    raw = [z3(ANCHORS[0] + timedelta(milliseconds=i * 977)) for i in range(1000)]
    assert _iso_swar(raw) == [_iso_general(t) for t in raw]
    assert _iso_swar(["1970-01-01T00:00:00.000Z"]) == [0]
    assert _iso_swar(["2023-02-29T00:00:00.000Z"]) is None  # no such day
    assert _iso_swar(["2026-11-26T24:00:00.000Z"]) is None
    assert _iso_swar(["2026-11-26T23:60:00.000Z"]) is None
    assert _iso_swar(["2026-11-26T23:00:60.000Z"]) is None
    assert _iso_swar(["2026-11-26T23:00:00.000z"]) is None  # valid, but for the slow path


def test_invalid_utf8_in_a_key_sends_the_batch_to_the_classifier() -> None:
    """msgspec raises UnicodeDecodeError (not a DecodeError) for bad UTF-8 in a string: the
    columnar path must hand the batch to decode_batch, which rejects that one record."""
    contract = Contract()
    bad = RawRecord(b'{"device_id": "\xff\xfe", "metric": "m", "value": 1, "ts": 1}', "k",
                    Position(1, 0), 0)
    assert decode_columns([bad], contract) is None
    events, rejected = decode_batch([bad], contract)
    assert events == [] and [(r.stage, r.reason) for r in rejected] == [("decode", "invalid_utf8")]


def _one_ts(t: int | str) -> int | None:
    """The per-record reading _each_ts must agree with: an int as it is (the decoder checked
    its range), a string by the general parser, None where that refuses or is out of range."""
    if isinstance(t, int):
        return t
    try:
        ms = _iso_general(t)
    except TimestampError:
        return None
    return ms if MIN_MS <= ms <= MAX_MS else None


@settings(max_examples=300, deadline=None)
@given(batches(), st.lists(st.integers(0, 2**41), max_size=40), st.randoms())
def test_each_ts_equals_the_per_record_reading(strs: list[str], ints: list[int],
                                               rnd: object) -> None:
    """Mixed batches ("auto": epoch ms and ISO strings), with some bad strings among them."""
    raw: list[int | str] = [*strs, *ints]
    rnd.shuffle(raw)  # type: ignore[attr-defined]
    assert _each_ts(raw) == [_one_ts(t) for t in raw]


class _Shape(msgspec.Struct):
    a: int


_DECODE = msgspec.json.Decoder(_Shape).decode


@given(st.lists(st.sampled_from([b'{"a": 1}', b'{"a": 2}', b'{"a": "x"}', b"[", b"\xff",
                                 b'{"a": 3, "b": [1]}']), max_size=30))
def test_decodable_equals_a_loop_over_every_record(datas: list[bytes]) -> None:
    """Failures anywhere (first, last, in a row) resume the map at the next record."""
    want_structs, want_at = [], []
    for i, d in enumerate(datas):
        try:
            want_structs.append(_DECODE(d))
        except (msgspec.DecodeError, UnicodeDecodeError):
            continue
        want_at.append(i)
    assert _decodable(_DECODE, datas) == (want_structs, want_at)


@given(st.lists(st.tuples(st.sampled_from(["d1", "d2", "d3"]), st.sampled_from(["t", "h"]),
                          st.integers(0, 2**40)), min_size=1, max_size=60))
def test_a_batch_shares_one_key_object_per_distinct_key(
        rows: list[tuple[str, str, int]]) -> None:
    """Equal keys are one object (the buffered Events hold it once), and the batch is still
    exactly decode_batch's."""
    contract = Contract()
    records = [RawRecord(msgspec.json.encode({"device_id": d, "metric": m, "value": 1.5,
                                              "ts": ts}), d, Position(i, 0), 0)
               for i, (d, m, ts) in enumerate(rows)]
    cols = decode_columns(records, contract)
    assert cols is not None
    keys = cols[0]
    assert len({id(k) for k in keys}) == len(set(keys)) == len({(d, m) for d, m, _ in rows})
    events, rejected = decode_batch(records, contract)
    assert keys == [e.key for e in events] and not rejected and not cols.rejected
