"""Where and how records are laid out as S3 objects (pure: names and bytes, no I/O).

An archive or quarantine object holds one shard's records of one hour partition, contiguous
in shard order. Its key carries the shard and the first and last position it holds:

    <prefix>dt=2026-11-26/hour=09/shard=shardId-000000000001/<first>_<last>.ndjson.gz

A results object holds one shard's final window results of one hour partition (by window
start), contiguous in the shard's window order (WindowOrder), many windows to an object:

    <prefix>dt=.../hour=.../shard=.../<kind>-<end>-<start>-<rank>_<end>-<start>-<rank>.ndjson.gz

Either name is a function of the items alone, so a replay that rebuilds the same batch writes
the same key; the shard's manifest (consumer/sinks/manifest.py) makes replays rebuild them.
"""

from __future__ import annotations

import base64
import gzip
import json
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import groupby, islice, repeat
from operator import le
from typing import Any, Generic, Literal, NamedTuple, TypeVar

import orjson
from isal import isal_zlib

from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.windows.model import WindowResult

ObjectFormat = Literal["ndjson", "parquet"]
SUFFIXES: dict[str, str] = {"ndjson": ".ndjson.gz", "parquet": ".parquet"}


@dataclass(frozen=True, slots=True)
class Provenance:
    stream: str
    shard_id: str


def position_token(p: Position) -> str:
    # Fixed width keeps lexical key order equal to shard order.
    return f"{p.sequence:056d}-{p.sub_sequence:010d}"


HOUR_MS = 3_600_000


@lru_cache(maxsize=4096)
def _hour_text(hour: int) -> str:
    t = datetime.fromtimestamp(hour * 3600, tz=UTC)
    return f"dt={t:%Y-%m-%d}/hour={t:%H}/"


def hour_partition(ms: int) -> str:
    # Records of a batch share few hours: the text is made once per hour, not per record.
    return _hour_text(ms // HOUR_MS)


def partition_prefix(prefix: str, partition: str, shard_id: str) -> str:
    return f"{prefix}{partition}shard={shard_id}/"


def object_key(partition_prefix_: str, first: Position, last: Position,
               fmt: ObjectFormat = "ndjson") -> str:
    return f"{partition_prefix_}{position_token(first)}_{position_token(last)}{SUFFIXES[fmt]}"


def provenance_fields(prov: Provenance, r: RawRecord) -> dict[str, object]:
    return {
        "stream": prov.stream,
        "shard": prov.shard_id,
        "sequence": str(r.position.sequence),
        "sub_sequence": r.position.sub_sequence,
        "partition_key": r.partition_key,
        "arrival_ms": r.arrival_ms,
    }


def archive_lines(prov: Provenance, events: Sequence[Event]) -> list[bytes]:
    """One NDJSON line per event: provenance, then the payload spliced in unparsed (it is
    valid JSON). The same bytes as orjson.dumps of provenance_fields + event_ts_ms + payload
    (property-tested), formatted directly: a dict and a dumps per record cost twice as much."""
    head = orjson.dumps({"stream": prov.stream, "shard": prov.shard_id})[:-1] + b',"sequence":"'
    dumps = orjson.dumps
    return [
        b'%s%d","sub_sequence":%d,"partition_key":%s,"arrival_ms":%d,"event_ts_ms":%d,'
        b'"payload":%s}\n' % (head, r.position.sequence, r.position.sub_sequence,
                               dumps(r.partition_key), r.arrival_ms, e.ts_ms, r.data)
        for e in events for r in (e.record,)
    ]


def archive_line(prov: Provenance, e: Event) -> bytes:
    return archive_lines(prov, [e])[0]


def quarantine_line(prov: Provenance, rej: Rejected, quarantined_ms: int) -> bytes:
    """Raw bytes kept whole (base64) with the reason, so a fixed consumer can replay them."""
    body = provenance_fields(prov, rej.record)
    body.update(
        stage=rej.stage,
        reason=rej.reason,
        message=rej.message,
        quarantined_ms=quarantined_ms,
        data_b64=base64.b64encode(rej.record.data).decode(),
    )
    return orjson.dumps(body) + b"\n"


class WindowOrder(NamedTuple):
    """Where a final window result stands in its shard's total order of final results.

    The engine finalizes a window when the watermark passes end + allowed lateness; the
    watermark never decreases, and a window still open has end + lateness above it, so a
    later engine step only finalizes windows whose end is strictly later (for every kind:
    see consumer/windows/engine.py). Within a step, results sort by (end, start, key). So
    (end, start, rank of the key within its window) orders a shard's final results the same
    way in every replay (property-tested in tests/unit/test_results_order.py)."""

    end_ms: int
    start_ms: int
    rank: int  # of the key within its window


P = TypeVar("P", Position, WindowOrder)  # what orders an object's items


def window_sort_key(r: WindowResult) -> tuple[int, int, tuple[str, ...]]:
    return (r.end_ms, r.start_ms, r.key)


def window_orders(results: Sequence[WindowResult]) -> list[WindowOrder]:
    """The orders of final results given sorted by window_sort_key, whole windows only: a
    result's rank counts the results before it in its window."""
    windows = [(r.end_ms, r.start_ms) for r in results]
    ranks: list[int] = []
    for _, run in groupby(windows):
        ranks.extend(range(len(list(run))))
    # tuple.__new__ builds each in C; WindowOrder(...) runs its generated Python __new__
    # (2.5% of the processor's py-spy samples in the S3 + windows bench).
    return list(map(tuple.__new__, repeat(WindowOrder),
                    [(end, start, rank) for (end, start), rank in zip(windows, ranks,
                                                                       strict=True)]))


def order_token(o: WindowOrder) -> str:
    # Fixed width (13-digit epoch ms until 2286) keeps lexical key order equal to window order.
    return f"{o.end_ms:013d}-{o.start_ms:013d}-{o.rank:06d}"


def results_key(partition_prefix_: str, kind: str, first: WindowOrder, last: WindowOrder,
                fmt: ObjectFormat = "ndjson") -> str:
    return f"{partition_prefix_}{kind}-{order_token(first)}_{order_token(last)}{SUFFIXES[fmt]}"


@dataclass(frozen=True, slots=True)
class ObjectPlan(Generic[P]):
    """Items bound for one partition of one shard, in their order (records: shard order;
    window results: WindowOrder), with their lines."""

    partition_prefix: str
    positions: tuple[P, ...]
    lines: tuple[bytes, ...]


def plan_objects(positions: Sequence[P], partition_ms: Sequence[int],
                 lines: Sequence[bytes], prefix: str, shard_id: str) -> list[ObjectPlan[P]]:
    """Group items (given as columns) by hour partition, in order inside each group."""
    if (partition_ms and min(partition_ms) // HOUR_MS == max(partition_ms) // HOUR_MS
            and ascending(positions)):
        # The common case: one hour, in the order the buffers give (sorted). The columns are
        # the plan as they are; regrouping and re-sorting them cost 8% of a flush.
        hour = _hour_text(partition_ms[0] // HOUR_MS)
        return [ObjectPlan(partition_prefix(prefix, hour, shard_id), tuple(positions),
                           tuple(lines))]
    return plan_objects_grouped(positions, partition_ms, lines, prefix, shard_id)


def plan_objects_grouped(positions: Sequence[P], partition_ms: Sequence[int],
                         lines: Sequence[bytes], prefix: str,
                         shard_id: str) -> list[ObjectPlan[P]]:
    """plan_objects for any input: group by hour, then sort each group (stable)."""
    by_hour: dict[int, list[int]] = defaultdict(list)
    for i, ms in enumerate(partition_ms):
        by_hour[ms // HOUR_MS].append(i)
    plans = []
    for hour, members in sorted(by_hour.items()):
        pos = [positions[i] for i in members]
        order = sorted(range(len(pos)), key=pos.__getitem__)
        plans.append(ObjectPlan(partition_prefix(prefix, _hour_text(hour), shard_id),
                                tuple(pos[i] for i in order),
                                tuple(lines[members[i]] for i in order)))
    return plans


def ascending(items: Sequence[Any]) -> bool:
    """Each item <= the next (compared in C, without building a sorted copy)."""
    return all(map(le, items, islice(items, 1, None)))


@dataclass(frozen=True, slots=True)
class Reserved(Generic[P]):
    """An object a shard's manifest says was (or is being) written: its key holds exactly
    the route's items of its partition from `first` to `last`."""

    key: str
    first: P
    last: P


def cut(plan: ObjectPlan[Position], reserved: Sequence[Reserved[Position]],
        fmt: ObjectFormat = "ndjson", max_records: int | None = None
        ) -> list[tuple[str, ObjectPlan[Position]]]:
    """cut_ranges for records: keys name the first and last position held."""
    return cut_ranges(plan, reserved, lambda pre, first, last: object_key(pre, first, last, fmt),
                      max_records)


def cut_ranges(plan: ObjectPlan[P], reserved: Sequence[Reserved[P]],
               name: Callable[[str, P, P], str], max_records: int | None = None
               ) -> list[tuple[str, ObjectPlan[P]]]:
    """A partition's items as (key, object) pairs that repeat every reserved object exactly
    (a writer that lost the shard may still be writing it) and cut the rest into new objects
    between them, each at most max_records; a new object's key is name(partition prefix,
    first item, last item)."""
    positions = plan.positions
    ranges = sorted((r for r in reserved if r.key.startswith(plan.partition_prefix)
                     and r.last >= positions[0] and r.first <= positions[-1]),
                    key=lambda r: r.first)
    out: list[tuple[str, ObjectPlan[P]]] = []
    lo = 0  # positions[lo:] are not placed yet; positions are sorted, so each piece is a slice
    for r in ranges:
        start = bisect_left(positions, r.first, lo)
        end = bisect_right(positions, r.last, start)
        out += _new_objects(plan, lo, start, name, max_records)
        if end > start:  # no new object spans a reserved range, even an empty one
            out.append((r.key, _slice(plan, start, end)))
        lo = end
    return out + _new_objects(plan, lo, len(positions), name, max_records)


def _new_objects(plan: ObjectPlan[P], lo: int, hi: int, name: Callable[[str, P, P], str],
                 max_records: int | None) -> list[tuple[str, ObjectPlan[P]]]:
    step = max_records or (hi - lo) or 1
    return [(name(plan.partition_prefix, plan.positions[i], plan.positions[min(i + step, hi) - 1]),
             _slice(plan, i, min(i + step, hi))) for i in range(lo, hi, step)]


def _slice(plan: ObjectPlan[P], lo: int, hi: int) -> ObjectPlan[P]:
    return ObjectPlan(plan.partition_prefix, plan.positions[lo:hi], plan.lines[lo:hi])


GZIP_WBITS = 16 + 15  # a gzip wrapper around a 32 kB window
GZIP_CHUNK_LINES = 4096  # about 1 MB of archive lines joined at a time


def gzip_body(lines: Iterable[bytes]) -> bytes:
    """The lines as one gzip member. The header holds no time: the same lines always give
    the same bytes, so a rewrite is byte-identical.

    ISA-L's deflate (plain gzip for every reader) at level 1: about a fifth of zlib level 1's
    CPU at a like ratio (measured on 58 MB of archive lines: 0.04 vs 0.20 CPU-s, ratio 10.9
    vs 10.2); the processor's CPU is the bottleneck. Streamed a chunk of lines at a time,
    not joined whole first: an archive object's lines are tens of MB, and a copy that size
    is fresh memory each flush (page faults) on top of the processor's peak."""
    deflate = isal_zlib.compressobj(1, isal_zlib.DEFLATED, GZIP_WBITS)
    it = iter(lines)
    parts = [deflate.compress(b"".join(chunk))
             for chunk in iter(lambda: list(islice(it, GZIP_CHUNK_LINES)), [])]
    parts.append(deflate.flush())
    return b"".join(parts)


def encode_body(lines: Iterable[bytes], fmt: ObjectFormat) -> bytes:
    """An object's bytes from its NDJSON lines: gzip NDJSON, or Parquet (zstd) for analytics.

    In Parquet a nested value (a record's payload) is kept as its JSON text, because payloads
    may differ in shape from record to record and one file has one schema.
    """
    if fmt == "ndjson":
        return gzip_body(lines)
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_parquet_row(line) for line in lines]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, compression="zstd")
    return sink.getvalue()


def _parquet_row(line: bytes) -> dict[str, Any]:
    """One NDJSON line as a Parquet row. A payload may hold a lone surrogate escape
    ("\\ud800"): valid JSON text, but not a string orjson or Arrow will take. Such a line is
    read with the stdlib, and every value that cannot be UTF-8 is kept as its JSON text
    (ASCII-escaped), so the record is written, not refused or retried."""
    try:
        return {k: orjson.dumps(v).decode() if isinstance(v, dict | list) else v
                for k, v in orjson.loads(line).items()}
    except orjson.JSONDecodeError:
        return {k: _safe_cell(v) for k, v in json.loads(line).items()}


def _safe_cell(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v)  # ensure_ascii: surrogates become \\uXXXX escapes
    if isinstance(v, str):
        try:
            v.encode()
        except UnicodeEncodeError:
            return json.dumps(v)[1:-1]
    return v


def decode_body(key: str, data: bytes) -> list[dict[str, Any]]:
    """The rows of an object written by encode_body, whichever its format."""
    if key.endswith(SUFFIXES["parquet"]):
        import io

        import pyarrow.parquet as pq

        return list(pq.read_table(io.BytesIO(data)).to_pylist())
    return [orjson.loads(line) for line in gzip.decompress(data).splitlines() if line]
