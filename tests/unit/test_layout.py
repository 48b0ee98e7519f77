"""S3 object naming and planning: deterministic keys, shard order, replay skipping."""

import gzip
import zlib

import orjson
from hypothesis import given
from hypothesis import strategies as st

from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.sinks.layout import (
    GZIP_CHUNK_LINES,
    ObjectPlan,
    Provenance,
    Reserved,
    archive_line,
    archive_lines,
    cut,
    gzip_body,
    hour_partition,
    object_key,
    plan_objects,
    plan_objects_grouped,
    provenance_fields,
    quarantine_line,
)

PROV = Provenance("events", "shardId-000000000001")


def event(seq: int, sub: int, ts_ms: int) -> Event:
    raw = RawRecord(
        b'{"device_id":"d","metric":"m","value":1.5,"ts":1}', "d", Position(seq, sub), 5
    )
    return Event(("d", "m"), ts_ms, 1.5, raw)


def test_key_names_its_range_and_sorts_in_shard_order() -> None:
    first, last = Position(49_680_569_627_287_411_978_382_143_521_977, 0), Position(10**55, 12)
    key = object_key("raw/dt=2026-11-26/hour=09/shard=s/", first, last)
    assert key.rsplit("/", 1)[1] == (f"{first.sequence:056d}-0000000000_"
                                     f"{last.sequence:056d}-0000000012.ndjson.gz")
    assert object_key("p/", Position(9, 0), Position(9, 0)) < object_key(
        "p/", Position(10, 0), Position(10, 0)
    )


def test_hour_partition_is_utc() -> None:
    assert hour_partition(1_795_000_000_000) == "dt=2026-11-18/hour=11/"
    assert hour_partition(0) == "dt=1970-01-01/hour=00/"


def test_archive_line_keeps_payload_and_provenance() -> None:
    row = orjson.loads(archive_line(PROV, event(123, 4, 1_795_000_000_000)))
    assert row["payload"] == {"device_id": "d", "metric": "m", "value": 1.5, "ts": 1}
    assert (row["shard"], row["sequence"], row["sub_sequence"]) == (PROV.shard_id, "123", 4)
    assert row["event_ts_ms"] == 1_795_000_000_000


def test_quarantine_line_keeps_raw_bytes_and_reason() -> None:
    raw = RawRecord(b"\xff\x00garbage", "pk", Position(7, 0), 11)
    row = orjson.loads(
        quarantine_line(PROV, Rejected(raw, "decode", "invalid_utf8", "not UTF-8"), 99)
    )
    import base64

    assert base64.b64decode(row["data_b64"]) == raw.data
    assert (row["stage"], row["reason"], row["arrival_ms"]) == ("decode", "invalid_utf8", 11)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3 * 3_600_000)),
        min_size=1,
        max_size=40,
        unique_by=lambda t: t[0],
    )
)
def test_plans_partition_every_event_once_in_order(items: list[tuple[int, int]]) -> None:
    events = [event(1000 + i * 10 + s, 0, ts) for i, (s, ts) in enumerate(items)]
    plans = plan_objects([e.record.position for e in events], [e.ts_ms for e in events],
                         archive_lines(PROV, events), "raw/", PROV.shard_id)
    planned = [p for plan in plans for p in plan.positions]
    assert sorted(planned) == sorted(e.record.position for e in events)
    line_of = {e.record.position: archive_line(PROV, e) for e in events}
    hour_of = {e.record.position: hour_partition(e.ts_ms) for e in events}
    for plan in plans:
        assert list(plan.positions) == sorted(plan.positions)
        assert plan.partition_prefix.endswith(f"shard={PROV.shard_id}/")
        assert list(plan.lines) == [line_of[p] for p in plan.positions]
        assert {hour_of[p] for p in plan.positions} == {plan.partition_prefix.split("shard=")[0]
                                                       .removeprefix("raw/")}


@given(st.lists(st.tuples(st.integers(0, 10**56 - 1), st.integers(0, 2**31),
                          st.text(min_size=1, max_size=8), st.integers(0, 2**53),
                          st.integers(0, 2**53)), max_size=20),
       st.text(min_size=1, max_size=8))
def test_archive_lines_equal_dumped_provenance_and_spliced_payload(
        rows: list[tuple[int, int, str, int, int]], stream: str) -> None:
    prov = Provenance(stream, "shardId-000000000001")
    events = [Event(("k",), ts, 1.0, RawRecord(b'{"a":[1,"x"]}', pk, Position(seq, sub), arr))
              for seq, sub, pk, arr, ts in rows]
    expected = [orjson.dumps({**provenance_fields(prov, e.record), "event_ts_ms": e.ts_ms})[:-1]
                + b',"payload":' + e.record.data + b"}\n" for e in events]
    assert archive_lines(prov, events) == expected


@given(st.lists(st.integers(0, 60), unique=True, min_size=1, max_size=40),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=6),
       st.integers(1, 7))
def test_cut_repeats_reserved_objects_and_cuts_the_rest_between_them(
        seqs: list[int], spans: list[tuple[int, int]], max_records: int) -> None:
    """Every record lands in exactly one object; a reserved object is repeated with exactly the
    records of its range; no new object's range overlaps a reserved one or holds a position
    its key does not name."""
    seqs.sort()
    plan = ObjectPlan("raw/p/", tuple(Position(s, 0) for s in seqs),
                      tuple(str(s).encode() for s in seqs))
    reserved: list[Reserved] = []
    for lo, width in sorted(spans):  # disjoint ranges, as one writer reserves them
        first, last = Position(lo, 0), Position(lo + width, 0)
        if all(last < r.first or first > r.last for r in reserved):
            reserved.append(Reserved(f"raw/p/r{lo}", first, last))
    objects = cut(plan, reserved, max_records=max_records)
    held = [p for _, obj in objects for p in obj.positions]
    assert sorted(held) == list(plan.positions) and len(held) == len(set(held))
    by_key = {r.key: r for r in reserved}
    for key, obj in objects:
        assert list(obj.positions) == sorted(obj.positions)
        if key in by_key:
            r = by_key[key]
            assert list(obj.positions) == [p for p in plan.positions if r.first <= p <= r.last]
        else:
            first, last = obj.positions[0], obj.positions[-1]
            assert key == object_key("raw/p/", first, last) and len(obj.positions) <= max_records
            assert all(last < r.first or first > r.last for r in reserved)


def test_gzip_body_is_deterministic() -> None:
    assert gzip_body([b"a\n", b"b\n"]) == gzip_body([b"a\n", b"b\n"])
    assert gzip.decompress(gzip_body([b"a\n"])) == b"a\n"
    assert gzip_body([b"a\n"])[4:8] == bytes(4)  # no modification time in the header


def test_gzip_body_streams_many_chunks_into_one_member() -> None:
    lines = [b'{"sequence":"%d","payload":{"v":%d}}\n' % (10**55 + i, i % 97)
             for i in range(3 * GZIP_CHUNK_LINES + 5)]
    body = gzip_body(iter(lines))
    assert body == gzip_body(lines)
    assert gzip.decompress(body) == b"".join(lines)
    assert zlib.decompressobj(31).decompress(body) == b"".join(lines)  # one member, not four


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_gzip_body_is_plain_gzip_that_the_stdlib_reads(lines: list[bytes]) -> None:
    # ISA-L writes it; Athena, Redshift COPY and our readers read it with zlib.
    body = gzip_body(lines)
    assert body[:2] == b"\x1f\x8b" and gzip.decompress(body) == b"".join(lines)


def test_parquet_and_ndjson_bodies_decode_to_the_same_rows() -> None:
    from consumer.sinks.layout import decode_body, encode_body

    lines = [archive_line(PROV, event(100 + i, i, 1_795_000_000_000 + i)) for i in range(5)]
    ndjson = decode_body("k.ndjson.gz", encode_body(lines, "ndjson"))
    parquet = decode_body("k.parquet", encode_body(lines, "parquet"))
    assert [r["sequence"] for r in parquet] == [r["sequence"] for r in ndjson]
    # Payloads differ in shape between records, so Parquet keeps each as JSON text.
    assert [orjson.loads(r["payload"]) for r in parquet] == [r["payload"] for r in ndjson]


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), max_size=40),
       st.sampled_from([0, 1_795_000_000_000]), st.booleans(), st.booleans())
def test_plans_of_one_sorted_hour_are_the_grouped_plans(
        items: list[tuple[int, int]], base_ms: int, one_hour: bool, in_order: bool) -> None:
    """plan_objects' shortcut (one hour, positions ascending) plans what the grouping plan
    does, and so does its fallback for everything else (hours mixed, order jumbled,
    positions repeated)."""
    if in_order:
        items.sort()
    positions = [Position(1_000 + seq, 0) for seq, _ in items]
    partition_ms = [base_ms + (0 if one_hour else hour * 3_600_000) + seq for seq, hour in items]
    lines = [b"line %d\n" % i for i in range(len(items))]
    assert (plan_objects(positions, partition_ms, lines, "raw/", "s")
            == plan_objects_grouped(positions, partition_ms, lines, "raw/", "s"))
