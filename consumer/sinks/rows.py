"""Adapters from the pipeline's values to the sinks' row types (pure).

The sinks take their own row classes (consumer/sinks/base.py) so they do not depend on the
decoder or the window engine; this is the one place that knows both sides.
"""

from __future__ import annotations

import orjson

from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.sinks.base import RawRow, RejectedItem, ResultRow
from consumer.windows.model import WindowResult


def raw_row(stream: str, shard_id: str, e: Event) -> RawRow:
    r = e.record
    return RawRow(
        stream=stream, shard=shard_id, sequence=r.position.sequence,
        sub_sequence=r.position.sub_sequence, partition_key=r.partition_key,
        arrival_ms=r.arrival_ms, event_ts_ms=e.ts_ms,
        device_id=e.key[0] if e.key else None,
        metric=e.key[1] if len(e.key) > 1 else None,
        value=e.value, payload=r.data.decode("utf-8", "replace"),
    )


def result_row(result: WindowResult) -> ResultRow:
    a = result.aggregates
    quantiles = {k: v for k, v in a.quantiles().items() if v is not None} if a.sketch else {}
    return ResultRow(
        result_id=result.result_id, kind=result.kind, start_ms=result.start_ms,
        end_ms=result.end_ms, key=result.key, shard_id=result.shard_id, count=a.count,
        sum=a.sum, min=a.min, max=a.max, mean=a.mean, first_ts_ms=a.first_ts_ms,
        last_ts_ms=a.last_ts_ms, is_final=result.is_final, quantiles=quantiles,
        version=result_version(a.count, result.is_final),
    )


def result_version(count: int, is_final: bool) -> int:
    """A window result only gains records between emissions, and its last emission is the
    final one (same records, is_final set), so this grows with every emission."""
    return 2 * count + int(is_final)


def result_line(row: ResultRow) -> bytes:
    """One NDJSON line of the S3 results objects."""
    body = {
        "result_id": row.result_id, "kind": row.kind, "window_start_ms": row.start_ms,
        "window_end_ms": row.end_ms, "key": list(row.key), "shard": row.shard_id,
        "count": row.count, "sum": row.sum, "min": row.min, "max": row.max, "mean": row.mean,
        "first_ts_ms": row.first_ts_ms, "last_ts_ms": row.last_ts_ms,
        "is_final": row.is_final, "quantiles": row.quantiles,
    }
    return orjson.dumps(body) + b"\n"


def rejected_by_sink(sink: str, item: RejectedItem, payload: bytes, position: Position,
                     now_ms: int) -> Rejected:
    """A document a sink refused (e.g. a mapping conflict), as a record for quarantine."""
    record = RawRecord(payload, item.item_id, position, now_ms)
    return Rejected(record, f"sink:{sink}", item.reason, f"HTTP {item.status}: {item.message}")
