"""Records into the transform stage: a RawRecord's bytes as a JSON object of fields, and the
lines of a file for `transform test` (plain NDJSON records, or our raw archive's lines,
which hold the record under "payload" beside its provenance). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from consumer.records.model import Position, RawRecord, Rejected
from consumer.transform.model import TRecord

ARCHIVE_KEYS = frozenset({"payload", "sequence", "sub_sequence"})


def from_raw(rec: RawRecord) -> TRecord | Rejected:
    """The record's fields, or why not (stage "decode", the decode stage's reasons)."""
    try:
        value = orjson.loads(rec.data)
    except orjson.JSONDecodeError as exc:
        try:
            rec.data.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected(rec, "decode", "invalid_utf8", "record is not UTF-8")
        return Rejected(rec, "decode", "invalid_json", f"not one JSON text: {exc}")
    if not isinstance(value, dict):
        return Rejected(rec, "decode", "not_an_object",
                        f"top level is a JSON {type(value).__name__}, not an object")
    return TRecord(value, rec)


def _archive_record(obj: dict[str, Any]) -> RawRecord | None:
    try:
        position = Position(int(obj["sequence"]), int(obj["sub_sequence"]))
    except (TypeError, ValueError):
        return None
    return RawRecord(orjson.dumps(obj["payload"]), str(obj.get("partition_key", "")),
                     position, int(obj.get("arrival_ms") or 0))


def _archive_object(line: bytes) -> dict[str, Any] | None:
    """The line as a raw-archive object (payload, sequence and sub_sequence), or None."""
    if not (line.lstrip().startswith(b"{") and b'"payload"' in line):
        return None
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) and obj.keys() >= ARCHIVE_KEYS else None


def raw_records(lines: Iterable[bytes]) -> Iterator[tuple[int, RawRecord]]:
    """(line number, record) per non-empty line. A raw-archive line (an object with payload,
    sequence and sub_sequence) gives its payload and position; any other line is a record
    as a producer sent it, at position (line number, 0)."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = _archive_object(line)
        rec = _archive_record(obj) if obj is not None else None
        yield n, rec or RawRecord(line.rstrip(b"\r\n"), "", Position(n, 0), 0)


def archive_shards(lines: Iterable[bytes]) -> set[str]:
    """The shards the raw-archive lines among these name (their provenance)."""
    return {str(obj["shard"]) for obj in map(_archive_object, lines)
            if obj is not None and obj.get("shard")}
