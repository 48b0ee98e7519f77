"""The sinks' per-batch builders hold exactly what the plain per-record ones do.

Two oracles: the plain path of this release (RawRow / ResultRow per record, then columns),
for any contract; and, for the default contract, the per-record encoders of the release
before the schema was derived (copied below as they were), so the bytes every sink receives
are unchanged: Redshift's staged CSV (encode_csv_plain; encode_csv, Arrow's writer, is
read by COPY as the same values: test_arrow_csv_copies_as_the_plain_csv), OpenSearch's bulk
body, the S3 results lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.model import Event, Position, RawRecord
from consumer.sinks import opensearch as osr
from consumer.sinks import redshift as rs
from consumer.sinks.base import RawRow, ResultRow
from consumer.sinks.rows import (
    columns_of,
    raw_columns,
    raw_row,
    result_columns,
    result_line,
    result_lines,
    result_lines_of,
    result_row,
)
from consumer.sinks.schema import DEFAULT_SCHEMA, RESULT_FIELDS, OutputSchema, output_schema
from consumer.windows.model import KINDS, Aggregates, WindowResult
from consumer.windows.sketch import sketch_bytes

# ---------------------------------------------------------------- the released encoders


def legacy_raw_values(row: RawRow) -> tuple[Any, ...]:
    payload = rs.fit_varchar(row.payload, 65535)
    return (row.stream, row.shard, str(row.sequence), row.sub_sequence, row.partition_key,
            row.arrival_ms, row.event_ts_ms, row.key[0] if row.key else None,
            row.key[1] if len(row.key) > 1 else None, row.value, payload,
            len(payload) != len(row.payload))


def legacy_result_values(row: ResultRow) -> tuple[Any, ...]:
    return (row.result_id, row.kind, row.start_ms, row.end_ms,
            orjson.dumps(list(row.key)).decode(), row.shard_id, row.count, row.sum, row.min,
            row.max, row.mean, row.first_ts_ms, row.last_ts_ms, row.is_final,
            orjson.dumps(row.quantiles, option=orjson.OPT_SORT_KEYS).decode(), row.version)


def legacy_result_line(row: ResultRow) -> bytes:
    body = {
        "result_id": row.result_id, "kind": row.kind, "window_start_ms": row.start_ms,
        "window_end_ms": row.end_ms, "key": list(row.key), "shard": row.shard_id,
        "count": row.count, "sum": row.sum, "min": row.min, "max": row.max, "mean": row.mean,
        "first_ts_ms": row.first_ts_ms, "last_ts_ms": row.last_ts_ms,
        "is_final": row.is_final, "quantiles": row.quantiles,
    }
    return orjson.dumps(body) + b"\n"


def legacy_result_doc(prefix: str, row: ResultRow) -> tuple[str, str, Mapping[str, Any], int]:
    source = {
        "result_id": row.result_id, "kind": row.kind, "window_start": row.start_ms,
        "window_end": row.end_ms, "key": list(row.key),
        "key_text": orjson.dumps(list(row.key)).decode(), "shard_id": row.shard_id,
        "count": row.count, "sum": row.sum, "min": row.min, "max": row.max, "mean": row.mean,
        "first_ts": row.first_ts_ms, "last_ts": row.last_ts_ms, "is_final": row.is_final,
        "quantiles": dict(row.quantiles),
    }
    return (osr.daily_index(prefix, "results", row.start_ms), row.result_id, source,
            row.version)


def legacy_raw_doc(prefix: str, row: RawRow) -> tuple[str, str, Mapping[str, Any], None]:
    source = {
        "stream": row.stream, "shard": row.shard, "sequence": str(row.sequence),
        "sub_sequence": row.sub_sequence, "partition_key": row.partition_key,
        "arrival": row.arrival_ms, "event_ts": row.event_ts_ms,
        "device_id": row.key[0] if row.key else None,
        "metric": row.key[1] if len(row.key) > 1 else None, "value": row.value,
        "payload": row.payload,
    }
    ts = row.event_ts_ms if row.event_ts_ms is not None else row.arrival_ms
    return (osr.daily_index(prefix, "raw", ts), row.doc_id, source, None)


def legacy_bulk_body(docs: Sequence[tuple[str, str, Mapping[str, Any], int | None]]) -> bytes:
    lines: list[bytes] = []
    for index, doc_id, source, version in docs:
        action: dict[str, object] = {"_index": index, "_id": doc_id}
        if version is not None:
            action["version"] = version
            action["version_type"] = "external"
        lines.append(orjson.dumps({"index": action}))
        lines.append(orjson.dumps(source))
    return b"\n".join(lines) + b"\n"


def csv_of_rows(spec: rs.TableSpec, rows: Sequence[tuple[Any, ...]]) -> bytes:
    return rs.encode_csv_plain(spec, [list(c) for c in zip(*rows, strict=True)] if rows else [])


# A CSV field as COPY (FORMAT csv, NULL '\\N') splits it: quoted ("" is a quote) or bare.
_FIELD = re.compile(r'"((?:[^"]|"")*)"|([^,\n"]*)')


def copied(spec: rs.TableSpec, data: bytes) -> list[tuple[Any, ...]]:
    """The rows COPY reads from a staged CSV: a bare \\N is NULL, a quoted field its text
    (even \\N), then each value as its column's type reads it (BIGINT an int, DOUBLE
    PRECISION a float, BOOLEAN true/false). -0.0 stays apart from 0.0 (as a sign)."""
    kinds = [c.sql_type for c in spec.columns]
    rows, text, at = [], data.decode(), 0
    while at < len(text):
        row: list[Any] = []
        while True:
            m = _FIELD.match(text, at)
            assert m is not None
            quoted, bare = m.group(1), m.group(2)
            row.append(quoted.replace('""', '"') if quoted is not None
                       else None if bare == rs.NULL_TOKEN else ("bare", bare))
            at = m.end() + 1
            if text[m.end()] == "\n":
                break
        rows.append(tuple(_typed(k, v) for k, v in zip(kinds, row, strict=True)))
    return rows


def _typed(sql_type: str, v: Any) -> Any:
    text = v[1] if isinstance(v, tuple) else v
    if v is None or sql_type.startswith("VARCHAR"):
        return v  # a bare text stays ("bare", text): we never write one
    if sql_type == "BIGINT":
        return int(text)
    if sql_type == "BOOLEAN":
        return {"true": True, "false": False}[text]
    f = float(text)
    return (f, math.copysign(1.0, f))


# ---------------------------------------------------------------- strategies

texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["", "\\N", '"', ",", "\n", "\x00", "é" * 70])
times = st.integers(0, 4_102_444_800_000)  # up to 2100: a daily index for each
floats = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def events(draw: st.DrawFn, parts: int) -> list[Event]:
    """Events of a contract with `parts` key fields, at distinct positions (some keys short,
    as a hand-built Event may be)."""
    seqs = draw(st.lists(st.integers(0, 10**56), unique=True, max_size=20))
    out = []
    for seq in seqs:
        key = tuple(draw(st.lists(texts, min_size=0 if draw(st.booleans()) else parts,
                                  max_size=parts)))
        data = draw(st.binary(max_size=30) | texts.map(str.encode))
        record = RawRecord(data, draw(texts), Position(seq, draw(st.integers(0, 2**31))),
                           draw(times))
        out.append(Event(key, draw(times), draw(floats), record))
    return out


@st.composite
def window_results(draw: st.DrawFn) -> list[WindowResult]:
    out = []
    for _ in range(draw(st.integers(0, 12))):
        values = draw(st.lists(floats.filter(lambda v: abs(v) < 1e300), min_size=1,
                               max_size=5))
        first = draw(times)
        sketch = sketch_bytes(values, 0.01) if draw(st.booleans()) else None
        aggs = Aggregates(len(values), sum(values), min(values), max(values), first,
                          first + draw(st.integers(0, 10**6)), sketch)
        start = draw(times)
        out.append(WindowResult(draw(st.sampled_from(KINDS)), start,
                                start + draw(st.integers(1, 10**7)),
                                tuple(draw(st.lists(texts, max_size=3))), draw(texts), aggs,
                                draw(st.booleans())))
    return out


def plain_raw(schema: OutputSchema, evs: list[Event]) -> list[RawRow]:
    return [raw_row("stream-a", "shardId-000000000001", e) for e in evs]


# ---------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(events(2))
def test_raw_batches_hold_the_released_rows_and_documents(evs: list[Event]) -> None:
    rows = plain_raw(DEFAULT_SCHEMA, evs)
    batch = raw_columns("stream-a", "shardId-000000000001", evs)
    assert batch == columns_of(rows, DEFAULT_SCHEMA.raw)
    binding = rs.event_binding(DEFAULT_SCHEMA, "stream-a", "shardId-000000000001")
    cols = rs.table_columns(binding.fields, binding.columns(evs))
    assert rs.encode_csv_plain(binding.spec, cols) == csv_of_rows(
        rs.RAW_TABLE, [legacy_raw_values(r) for r in rows])
    assert copied(binding.spec, rs.encode_csv(binding.spec, cols)) == copied(
        binding.spec, rs.encode_csv_plain(binding.spec, cols))
    docs = osr.raw_docs("p", DEFAULT_SCHEMA.raw, batch)
    assert osr.bulk_body(docs) == (legacy_bulk_body([legacy_raw_doc("p", r) for r in rows])
                                   if rows else b"")


@settings(max_examples=150, deadline=None)
@given(window_results())
def test_result_batches_hold_the_released_rows_lines_and_documents(
    results: list[WindowResult],
) -> None:
    rows = [result_row(r) for r in results]
    batch = result_columns(results)
    assert batch == columns_of(rows, RESULT_FIELDS)
    cols = rs.table_columns(RESULT_FIELDS, batch)
    assert rs.encode_csv_plain(rs.RESULTS_TABLE, cols) == (
        csv_of_rows(rs.RESULTS_TABLE, [legacy_result_values(r) for r in rows]))
    assert copied(rs.RESULTS_TABLE, rs.encode_csv(rs.RESULTS_TABLE, cols)) == copied(
        rs.RESULTS_TABLE, rs.encode_csv_plain(rs.RESULTS_TABLE, cols))
    assert result_lines_of(batch) == [legacy_result_line(r) for r in rows]
    assert result_lines(results) == result_lines_of(batch)  # the S3 route's own path
    assert [result_line(r) for r in rows] == [legacy_result_line(r) for r in rows]
    fast = osr.bulk_body(osr.result_docs("p", batch))
    assert fast == (legacy_bulk_body([legacy_result_doc("p", r) for r in rows]) if rows else b"")
    plain = osr.bulk_body([osr.result_doc("p", r) for r in rows])
    assert plain == fast


@settings(max_examples=100, deadline=None)
@given(events(3))
def test_any_contract_per_batch_equals_per_record(evs: list[Event]) -> None:
    """Three key fields: the Events' columns and the RawRows' columns give the same table
    rows and documents, each key part in its own column, None where a key is short."""
    schema = output_schema(("site", "sensor", "channel"))
    rows = plain_raw(schema, evs)
    fast = rs.event_binding(schema, "stream-a", "shardId-000000000001")
    plain = rs.raw_binding(schema)
    got = rs.table_rows(fast.fields, fast.columns(evs))
    assert got == rs.table_rows(plain.fields, plain.columns(rows))
    names = rs.raw_table(schema).column_names
    for row, e in zip(got, evs, strict=True):
        held = dict(zip(names, row, strict=True))
        assert [held["site"], held["sensor"], held["channel"]] == [
            *e.key, *[None] * (3 - len(e.key))]
    assert osr.bulk_body(osr.raw_docs("p", schema.raw, fast.columns(evs))) == osr.bulk_body(
        osr.raw_docs("p", schema.raw, plain.columns(rows)))


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers()), max_size=30))
def test_dedupe_keeps_the_last_row_of_each_identity(rows: list[tuple[int, int, int]]) -> None:
    batch = {"stream": ["s"] * len(rows), "seq": [r[0] for r in rows],
             "sub": [r[1] for r in rows], "v": [r[2] for r in rows]}
    got = rs.dedupe_columns(batch, ("stream", "seq", "sub"))
    last = {(seq, sub): v for seq, sub, v in rows}
    assert sorted(zip(got["seq"], got["sub"], got["v"], strict=True)) == sorted(
        (seq, sub, v) for (seq, sub), v in last.items())
    assert got["stream"] == ["s"] * len(last)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                          st.one_of(st.none(), floats, st.integers(-(2**53), 2**53)),
                          st.one_of(st.none(), st.booleans()), st.one_of(st.none(), texts)),
                max_size=15),
       st.booleans())
def test_arrow_csv_copies_as_the_plain_csv(rows: list[tuple[Any, ...]], wide: bool) -> None:
    """Every column kind, NULLs among them; `wide`: an integer beyond 64 bits, which Arrow
    cannot type, so that table takes the plain path."""
    spec = rs.TableSpec("t", (rs.Column("i", "BIGINT"), rs.Column("d", "DOUBLE PRECISION"),
                              rs.Column("b", "BOOLEAN"), rs.Column("s", "VARCHAR(8)", 8)),
                        ("i",))
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else []
    if wide and rows:
        cols[0][0] = 2**70
    arrow, plain = rs.encode_csv(spec, cols), rs.encode_csv_plain(spec, cols)
    assert copied(spec, arrow) == copied(spec, plain)
    if wide and rows:
        assert arrow == plain


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), texts, st.text(max_size=3).map(lambda t: t + "\x00"),
                          st.integers(-5, 5), st.booleans()), max_size=12),
       st.integers(1, 16))
def test_arrow_text_column_is_the_fitted_texts(values: list[Any], limit: int) -> None:
    """A VARCHAR column taken as it is when Arrow finds it clean equals the column fitted
    value by value in Python (cut to `limit` bytes, NUL replaced, a non-text value as its
    text, NULL kept)."""
    import pyarrow as pa

    fitted, _ = rs._fitted_texts(values, limit)
    want = pa.array(rs._with_nulls(values, fitted, None) if None in values else fitted,
                    pa.string())
    assert rs._arrow_text(pa, values, limit).equals(want)
