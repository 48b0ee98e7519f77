"""Lookup tables for the `lookup` step: parsed from CSV or NDJSON bytes (pure), looked up by
a key's text form. Loading them from a file or S3, and refreshing, is tables.py's job.

A key matches on its text: a string as it is, an integer (or integral float) in decimal, a
bool as true/false. CSV cells are strings; NDJSON values keep their JSON types. Anything
else as a key (null, a fraction, an object, a list), and a missing key field, is a miss.
A table with the same key twice is refused at load, not resolved silently.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson


class TableError(ValueError):
    """A table that cannot be used; the message names the line."""


@dataclass(frozen=True, slots=True)
class LookupTable:
    source: str  # where it was loaded from, for messages
    key: str  # the column holding the key
    rows: Mapping[str, Mapping[str, Any]]  # key text -> the row's other columns
    version: str = ""  # e.g. the S3 ETag or the file's mtime: unchanged means no reload


def key_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _index(rows: list[tuple[int, dict[str, Any]]], key: str, source: str,
           version: str) -> LookupTable:
    out: dict[str, Mapping[str, Any]] = {}
    for line, row in rows:
        text = key_text(row.get(key))
        if text is None:
            raise TableError(f"{source} line {line}: key column {key!r} is missing or not a "
                             f"string/integer: {row.get(key)!r}")
        if text in out:
            raise TableError(f"{source} line {line}: key {text!r} appears twice")
        out[text] = {k: v for k, v in row.items() if k != key}
    return LookupTable(source, key, out, version)


def parse_csv(data: bytes, key: str, source: str, version: str = "") -> LookupTable:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")), strict=True)
        rows = [(n + 2, dict(r)) for n, r in enumerate(reader)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{source}: not a UTF-8 CSV file: {exc}") from None
    if reader.fieldnames is None or key not in reader.fieldnames:
        raise TableError(f"{source}: no column {key!r} in the header {reader.fieldnames}")
    for line, row in rows:
        if None in row or None in row.values():  # a row with more or fewer cells than the header
            raise TableError(f"{source} line {line}: not as many cells as the header has")
    return _index(rows, key, source, version)


def parse_ndjson(data: bytes, key: str, source: str, version: str = "") -> LookupTable:
    rows = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TableError(f"{source} line {n}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise TableError(f"{source} line {n}: not a JSON object")
        rows.append((n, row))
    return _index(rows, key, source, version)


def parse_table(data: bytes, key: str, source: str, version: str = "") -> LookupTable:
    """By the source's name: .csv is CSV, .ndjson / .jsonl / .json is NDJSON."""
    name = source.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return parse_csv(data, key, source, version)
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return parse_ndjson(data, key, source, version)
    raise TableError(f"{source}: a lookup table must be .csv, .ndjson or .jsonl")
