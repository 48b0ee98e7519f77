"""The one definition of every output schema, derived from the record contract (pure).

Each output is an ordered tuple of `Field`s: where the value comes from (`source`, an
attribute of RawRow / ResultRow and a column of a batch), its type, and its name in each sink
(None: that sink does not hold it). Everything else is generated from these tuples: the
Redshift DDL, CSV and COPY column lists (consumer/sinks/redshift.py), the OpenSearch mappings
and documents (consumer/sinks/opensearch.py) and the S3 results lines (consumer/sinks/rows.py).

The raw output holds one text field per contract key field, named after the field's path
(`column_name`); the result output holds the whole key as one array, so its shape does not
depend on the contract. A type may stand for more than one stored field:
- `key` (the whole key): Redshift text holding the JSON array; OpenSearch a keyword array
  plus `<name>_text`, the same JSON text (for terms aggregations that merge shards);
- `payload`: Redshift text cut to fit plus `<name>_truncated`; OpenSearch unindexed text;
- `object` (quantiles): Redshift JSON text with sorted keys; OpenSearch a dynamic object;
- `sequence`: a Kinesis sequence number (up to 56 digits) stored as its decimal text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from consumer.records.contract import Contract

FieldType = Literal["text", "long", "double", "bool", "time", "sequence", "key", "object",
                    "payload"]


@dataclass(frozen=True, slots=True)
class Field:
    source: str  # attribute of the row value, and the batch column it is read from
    type: FieldType
    redshift: str | None  # column name in Redshift
    opensearch: str | None  # field of the OpenSearch document
    ndjson: str | None = None  # field of an S3 results line
    max_bytes: int = 256  # text stored in Redshift (VARCHAR(n) counts bytes)
    part: int | None = None  # a key field: this part of the `source` tuple


def _both(source: str, type_: FieldType, name: str, max_bytes: int = 256) -> Field:
    return Field(source, type_, name, name, max_bytes=max_bytes)


# Raw records: identity first, the contract's key fields go between RAW_HEAD and RAW_TAIL.
RAW_HEAD: tuple[Field, ...] = (
    _both("stream", "text", "stream"),
    _both("shard", "text", "shard"),
    Field("sequence", "sequence", "sequence_number", "sequence", max_bytes=64),
    Field("sub_sequence", "long", "sub_sequence_number", "sub_sequence"),
    _both("partition_key", "text", "partition_key", 1024),
    Field("arrival_ms", "time", "arrival_ms", "arrival"),
    Field("event_ts_ms", "time", "event_ts_ms", "event_ts"),
)
RAW_TAIL: tuple[Field, ...] = (
    _both("value", "double", "value"),
    _both("payload", "payload", "payload", 65535),
)
RAW_IDENTITY = ("stream", "shard", "sequence", "sub_sequence")

RESULT_FIELDS: tuple[Field, ...] = (
    Field("result_id", "text", "result_id", "result_id", "result_id", max_bytes=128),
    Field("kind", "text", "window_kind", "kind", "kind", max_bytes=64),
    Field("start_ms", "time", "window_start_ms", "window_start", "window_start_ms"),
    Field("end_ms", "time", "window_end_ms", "window_end", "window_end_ms"),
    Field("key", "key", "window_key", "key", "key", max_bytes=4096),
    Field("shard_id", "text", "shard_id", "shard_id", "shard"),
    Field("count", "long", "value_count", "count", "count"),
    Field("sum", "double", "value_sum", "sum", "sum"),
    Field("min", "double", "value_min", "min", "min"),
    Field("max", "double", "value_max", "max", "max"),
    Field("mean", "double", "value_mean", "mean", "mean"),
    Field("first_ts_ms", "time", "first_ts_ms", "first_ts", "first_ts_ms"),
    Field("last_ts_ms", "time", "last_ts_ms", "last_ts", "last_ts_ms"),
    Field("is_final", "bool", "is_final", "is_final", "is_final"),
    Field("quantiles", "object", "quantiles_json", "quantiles", "quantiles", max_bytes=4096),
    # OpenSearch keeps it as the document's external version, not as a field.
    Field("version", "long", "version", None),
)
RESULT_IDENTITY = ("result_id",)
RESULT_VERSION = "version"  # the source that orders emissions of one result id

MergeRule = Literal["sum", "min", "max", "mean", "distinct", "all"]
# Redshift's view over the results of every shard, one row per window and key (see
# consumer/sinks/redshift.py merged_view_sql), after its grouping columns: (rule, source,
# name in the view; None: the source's column name), in the view's column order.
MERGED_MEASURES: tuple[tuple[MergeRule, str, str | None], ...] = (
    ("sum", "count", None),
    ("sum", "sum", None),
    ("min", "min", None),
    ("max", "max", None),
    ("mean", "mean", None),  # recomputed from the sums: a mean of means weighs shards wrongly
    ("min", "first_ts_ms", None),
    ("max", "last_ts_ms", None),
    ("distinct", "shard_id", "shard_count"),
    ("all", "is_final", None),
)

# Suffixes of the extra fields some types add (see the module docstring).
TEXT_SUFFIX = "_text"
TRUNCATED_SUFFIX = "_truncated"

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Reserved words of Amazon Redshift (its documentation's list) and of PostgreSQL (the local
# stand-in): a column may not be named so without quotes, and the generated SQL uses none.
SQL_RESERVED = frozenset("""
aes128 aes256 all allowoverwrite analyse analyze and any array as asc authorization az64
backup between binary blanksasnull both bytedict bzip2 case cast check collate column
constraint create credentials cross current_date current_time current_timestamp current_user
current_user_id default deferrable deflate defrag delta delta32k desc disable distinct do else
emptyasnull enable encode encrypt encryption end except explicit false for foreign freeze from
full globaldict256 globaldict64k grant group gzip having identity ignore ilike in initially
inner intersect interval into is isnull join leading left like limit localtime localtimestamp
lun luns lzo lzop minus mostly16 mostly32 mostly8 natural new not notnull null nulls off
offline offset oid old on only open or order outer overlaps parallel partition percent
permissions pivot placing primary raw readratio recover references rejectlog resort respect
restore right select session_user similar snapshot some sysdate system table tag tdes text255
text32k then timestamp to top trailing true truncatecolumns union unique unnest unpivot user
using verbose wallet when where with without
asymmetric collation concurrently current_catalog current_role current_schema fetch lateral
returning symmetric system_user tablesample variadic window
""".split())  # noqa: SIM905 (the words as the documentation lists them)


def column_name(path: str) -> str:
    """A key field's path as a column / document field name: lower case, every character
    other than a-z, 0-9 and _ (the dots of a nested path too) replaced by _."""
    return re.sub(r"[^a-z0-9_]", "_", path.lower())


def stored_names(fields: tuple[Field, ...]) -> set[str]:
    """Every name the fields take in any sink, the extra fields of their types included."""
    out: set[str] = set()
    for f in fields:
        out.update(n for n in (f.redshift, f.opensearch, f.ndjson) if n)
        if f.redshift and f.type == "payload":
            out.add(f.redshift + TRUNCATED_SUFFIX)
        if f.opensearch and f.type == "key":
            out.add(f.opensearch + TEXT_SUFFIX)
    return out


def _name_problem(name: str, taken: dict[str, str]) -> str | None:
    if not _NAME.fullmatch(name):
        return "must start with a letter and be at most 63 characters"
    if name in SQL_RESERVED:
        return "is a reserved word in SQL"
    if name in taken:
        return f"is taken by {taken[name]}"
    return None


def key_columns(key_fields: tuple[str, ...]) -> tuple[str, ...]:
    """The raw output's name for each key field; ValueError (naming the field) when a name is
    not a valid identifier, is reserved in SQL, or is taken by another field."""
    taken = dict.fromkeys(stored_names((*RAW_HEAD, *RAW_TAIL)), "a field every raw record has")
    out = []
    for path in key_fields:
        name = column_name(path)
        why = _name_problem(name, taken)
        if why:
            raise ValueError(f"key field {path!r} would be stored as {name!r}, which {why}")
        taken[name] = f"key field {path!r}"
        out.append(name)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """Every output's fields for one contract; build it with `output_schema`."""

    key_fields: tuple[str, ...]
    raw: tuple[Field, ...]
    results: tuple[Field, ...] = RESULT_FIELDS


def output_schema(key_fields: tuple[str, ...]) -> OutputSchema:
    keys = tuple(Field("key", "text", name, name, part=i)
                 for i, name in enumerate(key_columns(key_fields)))
    return OutputSchema(key_fields, (*RAW_HEAD, *keys, *RAW_TAIL))


DEFAULT_SCHEMA = output_schema(Contract().key_fields)
