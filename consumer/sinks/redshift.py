"""Redshift sink: stage a batch as a CSV object, COPY it into a temp table, MERGE on identity.

Functional core (pure): table specs, CSV encoding, in-batch dedupe, DDL / COPY / MERGE SQL
builders and a Redshift-MERGE-form lint. Thin shell: `migrate`, `RedshiftLoader` (one
transaction per batch) and `RedshiftSink` (retries through `retry.Retrier`). Tables, columns
and the merged view are generated from the fields of consumer/sinks/schema.py, and a batch
arrives as columns (consumer/sinks/rows.py): no row object, one pass per column.

Exactly-once effects: tables have no primary keys (Redshift does not enforce them, so a
PK-based local test would hide duplicates); instead every load merges on the row identity,
so a replayed or overlapping batch overwrites. The MERGE uses only the form Redshift
accepts: one WHEN MATCHED THEN UPDATE and one WHEN NOT MATCHED THEN INSERT, a plain table as
source (no ON CONFLICT, no extra conditions), and the source is deduplicated first because
MERGE fails when two source rows match one target row.

Dialect seam: production COPYs the staged object straight from S3 with an IAM role; the
local PostgreSQL stand-in cannot, so it reads the same staged bytes and COPYs FROM STDIN.

Staging hygiene: a staged object is deleted once its load has committed; a failed delete is
logged and counted, never fails the load (the template's lifecycle rule on the staging prefix
expires what is left). A load transaction is bounded by a client-side deadline
(`load_deadline_s`), because a hung cluster answers neither statement_timeout nor keepalives.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import orjson

from consumer.metrics import registry as m
from consumer.records.model import Event
from consumer.sinks.base import RawRow, ResultRow, WriteOutcome
from consumer.sinks.errors import describe, is_retryable
from consumer.sinks.fence import Fenced, FenceToken
from consumer.sinks.retry import Retrier
from consumer.sinks.rows import Columns, columns_of, part_column, raw_columns, result_columns
from consumer.sinks.schema import (
    DEFAULT_SCHEMA,
    MERGED_MEASURES,
    RAW_IDENTITY,
    RESULT_FIELDS,
    RESULT_IDENTITY,
    RESULT_VERSION,
    TRUNCATED_SUFFIX,
    Field,
    OutputSchema,
)
from consumer.windows.model import WindowResult

log = logging.getLogger(__name__)
RowT = TypeVar("RowT")
Value = str | int | float | bool | None

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
NULL_TOKEN = r"\N"  # bare (unquoted) \N is NULL; strings are always quoted, so never ambiguous


def ident(name: str) -> str:
    """Validate an SQL identifier; identifiers cannot be bound, so only this shape passes."""
    if not _IDENT.match(name):
        raise ValueError(f"invalid SQL identifier: {name!r}")
    return name


# ---------------------------------------------------------------- table specs (pure data)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    sql_type: str
    varchar_bytes: int | None = None  # Redshift VARCHAR(n) counts bytes: values are cut to fit


@dataclass(frozen=True, slots=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    identity: tuple[str, ...]
    # A row replaces the stored row of its identity only if its version is greater: a replay
    # after a failover re-emits older versions of window results, which must not win.
    version: str | None = None

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


_SQL_TYPES = {"long": "BIGINT", "time": "BIGINT", "double": "DOUBLE PRECISION",
              "bool": "BOOLEAN"}


def columns_for(field: Field) -> tuple[Column, ...]:
    """The column(s) a field is stored in (see consumer/sinks/schema.py for the types)."""
    assert field.redshift is not None
    name = field.redshift
    if field.type in _SQL_TYPES:
        return (Column(name, _SQL_TYPES[field.type]),)
    text = Column(name, f"VARCHAR({field.max_bytes})", field.max_bytes)
    if field.type == "payload":
        return (text, Column(name + TRUNCATED_SUFFIX, "BOOLEAN"))
    return (text,)


def table_spec(name: str, fields: tuple[Field, ...], identity: tuple[str, ...],
               version: str | None = None) -> TableSpec:
    """The table of the fields Redshift holds; identity and version name field sources."""
    by_source = {f.source: f.redshift for f in fields if f.part is None}

    def column(source: str) -> str:
        col = by_source[source]
        assert col is not None
        return col

    return TableSpec(name, tuple(c for f in fields if f.redshift for c in columns_for(f)),
                     tuple(map(column, identity)), column(version) if version else None)


RAW_TABLE_NAME = "raw_records"
RESULTS_TABLE = table_spec("window_results", RESULT_FIELDS, RESULT_IDENTITY, RESULT_VERSION)


def results_table(aggregation: str = "") -> TableSpec:
    """The window results table of an aggregation: `window_results` for the default one,
    `window_results_<name>` for a declared one (consumer/windows/aggconfig.py names)."""
    if not aggregation:
        return RESULTS_TABLE
    return table_spec(f"window_results_{aggregation}", RESULT_FIELDS, RESULT_IDENTITY,
                      RESULT_VERSION)


def raw_table(schema: OutputSchema) -> TableSpec:
    return table_spec(RAW_TABLE_NAME, schema.raw, RAW_IDENTITY)


RAW_TABLE = raw_table(DEFAULT_SCHEMA)

# Who may load a shard's rows: the fence token of the newest tenure (consumer/sinks/fence.py),
# checked and bumped inside every load transaction. A primary key is informational in Redshift
# (there, serializable isolation refuses a racing insert); PostgreSQL enforces it.
FENCE_TABLE = "shard_fences"
FENCE_DDL = """CREATE TABLE IF NOT EXISTS {schema}.shard_fences (
  stream VARCHAR(256) NOT NULL,
  shard VARCHAR(256) NOT NULL,
  owner VARCHAR(512) NOT NULL,
  lease_counter BIGINT NOT NULL,
  spawned_ns BIGINT NOT NULL,
  loads BIGINT NOT NULL,
  PRIMARY KEY (stream, shard)
)"""

MERGED_VIEW = "window_results_merged"


def merged_view_name(aggregation: str = "") -> str:
    return f"window_results_{aggregation}_merged" if aggregation else MERGED_VIEW


def fit_varchar(text: str, max_bytes: int) -> str:
    """Cut text to at most max_bytes of UTF-8 without splitting a character.

    NUL is replaced: PostgreSQL text cannot hold it and Redshift COPY rejects it.
    """
    if len(text) * 4 <= max_bytes and "\x00" not in text:
        return text  # fast path: fits whatever the characters are
    text = text.replace("\x00", "\ufffd")
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode(errors="ignore")


def _fits(texts: list[str], joined: str, max_bytes: int) -> bool:
    """True when no text needs a cut or a NUL replaced; `joined` is "".join(texts). Checked
    at C speed: ASCII takes a byte per character, anything else at most 4."""
    if not texts or "\x00" in joined:
        return not texts
    longest = max(map(len, texts))
    return longest <= max_bytes if joined.isascii() else longest * 4 <= max_bytes


def field_columns(field: Field, batch: Columns) -> list[Sequence[Value]]:
    """A field's column(s) of table values, from the batch column it reads."""
    values = batch[field.source]
    if field.part is not None:
        return [part_column(values, field.part)]
    if field.type == "sequence":
        return [list(map(str, values))]  # up to 56 digits: beyond DECIMAL(38)
    if field.type == "key":
        return [[orjson.dumps(k).decode() for k in values]]  # the view groups by this text
    if field.type == "object":
        return [[orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode() for v in values]]
    if field.type == "payload":
        if _fits(values, "".join(values), field.max_bytes):
            return [values, [False] * len(values)]
        cut = [fit_varchar(t, field.max_bytes) for t in values]
        return [cut, [len(c) != len(t) for c, t in zip(cut, values, strict=True)]]
    return [values]


def table_columns(fields: tuple[Field, ...], batch: Columns) -> list[Sequence[Value]]:
    """The batch as the table's columns, in the table's column order."""
    return [col for f in fields if f.redshift for col in field_columns(f, batch)]


def table_rows(fields: tuple[Field, ...], batch: Columns) -> list[tuple[Value, ...]]:
    return list(zip(*table_columns(fields, batch), strict=True))


@dataclass(frozen=True, slots=True)
class TableBinding(Generic[RowT]):
    """How a batch of one item type maps onto one table: as columns, read by the fields."""

    spec: TableSpec
    fields: tuple[Field, ...]
    columns: Callable[[Sequence[RowT]], Columns]
    identity: tuple[str, ...]  # field sources


def raw_binding(schema: OutputSchema) -> TableBinding[RawRow]:
    return TableBinding(raw_table(schema), schema.raw, lambda rows: columns_of(rows, schema.raw),
                        RAW_IDENTITY)


def event_binding(schema: OutputSchema, stream: str, shard_id: str) -> TableBinding[Event]:
    """The pipeline's raw records, straight from its Events."""
    return TableBinding(raw_table(schema), schema.raw,
                        lambda events: raw_columns(stream, shard_id, events), RAW_IDENTITY)


RAW_BINDING = raw_binding(DEFAULT_SCHEMA)
RESULTS_BINDING: TableBinding[ResultRow] = TableBinding(
    RESULTS_TABLE, RESULT_FIELDS, lambda rows: columns_of(rows, RESULT_FIELDS), RESULT_IDENTITY)
WINDOW_BINDING: TableBinding[WindowResult] = TableBinding(
    RESULTS_TABLE, RESULT_FIELDS, result_columns, RESULT_IDENTITY)


def window_binding(aggregation: str = "") -> TableBinding[WindowResult]:
    if not aggregation:
        return WINDOW_BINDING
    return TableBinding(results_table(aggregation), RESULT_FIELDS, result_columns,
                        RESULT_IDENTITY)


# ---------------------------------------------------------------- pure transforms


def dedupe_columns(batch: Columns, identity: tuple[str, ...]) -> Columns:
    """Keep the last row per identity (a later row is a newer version)."""
    cols = [batch[s] for s in identity]
    # A column holding one value throughout (a batch's stream and shard) tells no row apart.
    varying = [c for c in cols if c.count(c[0]) != len(c)] if cols[0] else []
    ids: list[Any] = (varying[0] if len(varying) == 1
                      else list(zip(*varying, strict=True)) if varying else [()] * len(cols[0]))
    last = {k: i for i, k in enumerate(ids)}
    if len(last) == len(ids):
        return batch
    keep = sorted(last.values())
    return {s: [col[i] for i in keep] for s, col in batch.items()}


def _fitted_texts(values: Sequence[Value], limit: int) -> tuple[list[str], str]:
    """A text column's non-NULL values as strings cut to fit `limit` bytes, and their join
    before the cut (a cut only removes characters). Checked at C speed: only a column that
    needs a cut is cut per value."""
    texts = cast(list[str], [v for v in values if v is not None] if None in values
                 else [*values])
    try:
        joined = "".join(texts)
    except TypeError:  # a non-str value in a text column: render it as text
        texts = [str(v) for v in texts]
        joined = "".join(texts)
    if not _fits(texts, joined, limit):
        texts = [fit_varchar(t, limit) for t in texts]
    return texts, joined


def _with_nulls(values: Sequence[Value], texts: list[Any], null: Any) -> list[Any]:
    """texts (one per non-NULL value, in order) with `null` where values holds None."""
    it = iter(texts)
    return [null if v is None else next(it) for v in values]


def _encode_column(column: Column, values: Sequence[Value]) -> tuple[Sequence[Any], str]:
    """One column as (values, printf piece); encode_csv_plain then formats each row with one
    `%`. Decisions are made per column at C speed (joins, `in`)."""
    has_null = None in values
    if column.varchar_bytes is not None:
        texts, joined = _fitted_texts(values, column.varchar_bytes)
        if '"' in joined:
            texts = [t.replace('"', '""') for t in texts]
        if not has_null:
            return texts, '"%s"'
        return _with_nulls(values, [f'"{t}"' for t in texts], NULL_TOKEN), "%s"
    if column.sql_type == "BOOLEAN":
        return [NULL_TOKEN if v is None else ("true" if v else "false") for v in values], "%s"
    if not has_null:
        return values, "%r"  # repr round-trips floats exactly
    return [NULL_TOKEN if v is None else repr(v) for v in values], "%s"


def encode_csv_plain(spec: TableSpec, columns: Sequence[Sequence[Value]]) -> bytes:
    """CSV that both Redshift COPY and PostgreSQL COPY read identically, from the table's
    columns (`table_columns`), one `%` per row: the reference encode_csv is tested against,
    and its path for a column Arrow cannot type.

    Strings are always quoted and NULL is a bare \\N, so a string is never read as NULL;
    VARCHARs are cut to fit.
    """
    if not columns or not columns[0]:
        return b""
    # strict zips: a column of the wrong length is a bug, so fail loudly (ValueError)
    encoded = [_encode_column(c, v) for c, v in zip(spec.columns, columns, strict=True)]
    line = ",".join(piece for _, piece in encoded) + "\n"
    return "".join([line % row for row in zip(*(v for v, _ in encoded), strict=True)]).encode()


def encode_csv(spec: TableSpec, columns: Sequence[Sequence[Value]]) -> bytes:
    """encode_csv_plain's table, written by Arrow's CSV writer (C++): every value quoted but
    NULL, a bare \\N. COPY reads the same values from both (property-tested: a quoted number
    is the number; Arrow writes doubles in shortest round-trip form, as repr does); Arrow's
    is 3.4x faster on the bench's raw rows, the largest cost of a staged load. A column Arrow
    cannot type (mixed kinds, an integer beyond 64 bits) takes encode_csv_plain."""
    if not columns or not columns[0]:
        return b""
    # Imported here: pyarrow costs a processor 0.06 CPU-s of start-up, for Redshift only.
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    if len({len(c) for c in columns}) != 1 or len(columns) != len(spec.columns):
        raise ValueError("table columns differ in length or number from the table's")
    try:
        arrays = [_arrow_column(pa, c, v) for c, v in zip(spec.columns, columns, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return encode_csv_plain(spec, columns)
    out = pa.BufferOutputStream()
    pa_csv.write_csv(pa.Table.from_arrays(arrays, names=list(spec.column_names)), out,
                     pa_csv.WriteOptions(include_header=False, quoting_style="all_valid",
                                         null_string=NULL_TOKEN))
    return cast(bytes, out.getvalue().to_pybytes())


def _arrow_column(pa: Any, column: Column, values: Sequence[Value]) -> Any:
    if column.varchar_bytes is not None:
        return _arrow_text(pa, values, column.varchar_bytes)
    if column.sql_type == "BOOLEAN":
        return pa.array(values, pa.bool_())
    array = pa.array(values)  # BIGINT or DOUBLE PRECISION: int64 or double, as given
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
            or pa.types.is_null(array.type)):
        raise pa.ArrowTypeError(f"{column.name}: {array.type} in a {column.sql_type} column")
    return array


def _arrow_text(pa: Any, values: Sequence[Value], limit: int) -> Any:
    """A VARCHAR column as Arrow strings: the values as they are when Arrow's C++ finds them
    all strings, none over `limit` bytes and none holding NUL (the common case; Python's
    checks cost as much as the conversion), else _fitted_texts' (cut, NUL replaced, another
    kind of value as its text)."""
    import pyarrow.compute as pc

    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        array = None  # mixed kinds of value
    if array is not None and pa.types.is_string(array.type) and \
            pc.max(pc.binary_length(array)).as_py() <= limit and \
            not pc.any(pc.match_substring(array, "\x00")).as_py():
        return array
    texts, _ = _fitted_texts(values, limit)
    return pa.array(_with_nulls(values, texts, None) if None in values else texts, pa.string())


# ---------------------------------------------------------------- SQL builders (pure)


def ddl_statements(schema: str, tables: tuple[TableSpec, ...] = (RAW_TABLE, RESULTS_TABLE),
                   aggregations: Sequence[str] = ()) -> list[str]:
    """The schema, the tables, the fence table and the merged view; for each declared
    aggregation its own results table (after `tables`) and merged view."""
    s = ident(schema)
    stmts = [f"CREATE SCHEMA IF NOT EXISTS {s}"]
    for spec in (*tables, *map(results_table, aggregations)):
        cols = ",\n  ".join(f"{ident(c.name)} {c.sql_type}" for c in spec.columns)
        stmts.append(f"CREATE TABLE IF NOT EXISTS {s}.{ident(spec.name)} (\n  {cols}\n)")
    stmts.append(FENCE_DDL.format(schema=s))
    stmts += [merged_view_sql(s, a) for a in ("", *aggregations)]
    return stmts


_MERGE_SQL = {"sum": "SUM({})", "min": "MIN({})", "max": "MAX({})",
              "distinct": "COUNT(DISTINCT {})", "all": "BOOL_AND({})"}


def _merged_columns(col: dict[str, str]) -> str:
    """The view's measures (schema.MERGED_MEASURES), each on its own line."""
    count, total = col["count"], col["sum"]

    def measure(rule: str, source: str, name: str | None) -> str:
        if rule == "mean":
            return (f"CASE WHEN SUM({count}) > 0\n    THEN SUM({total}) / SUM({count}) END"
                    f" AS {name or col[source]}")
        return f"{_MERGE_SQL[rule].format(col[source])} AS {name or col[source]}"

    return "\n  " + ",\n  ".join(measure(*m) for m in MERGED_MEASURES)


def merged_view_sql(schema: str, aggregation: str = "") -> str:
    """One row per window and key: partial results of several shards combined.

    count and sum add up, min/max combine, and mean is recomputed from the sums (a mean of
    means would weigh shards wrongly). Quantiles cannot be merged from quantile values.
    Tumbling and sliding windows are combined by their exact bounds. Sessions have no common
    bounds across shards (a reshard splits a key's records between parent and children, and
    each shard closes its own sessions), so they are combined as the engine would have
    combined them on one shard: per key, sessions whose [start, end) overlap, directly or
    through a chain, are one session (a gaps-and-islands query: a row starts a new island
    when it starts at or after the furthest end of the rows before it). Touching sessions
    ([a, b) and [b, c)) stay apart, as in the engine, where a record at exactly last + gap
    opens a new session.
    """
    s = ident(schema)
    table = f"{s}.{results_table(aggregation).name}"
    col = {f.source: f.redshift for f in RESULT_FIELDS if f.redshift}
    kind, start, end, key = col["kind"], col["start_ms"], col["end_ms"], col["key"]
    measures = _merged_columns(col)
    order = f"ORDER BY {start}, {end}, {col['shard_id']}, {col['result_id']}"
    return f"""CREATE OR REPLACE VIEW {s}.{merged_view_name(aggregation)} AS
SELECT {kind}, {start}, {end}, {key},{measures}
FROM {table}
WHERE {kind} <> 'session'
GROUP BY {kind}, {start}, {end}, {key}
UNION ALL
SELECT {kind}, MIN({start}) AS {start},
  MAX({end}) AS {end}, {key},{measures}
FROM (
  SELECT *, SUM(CASE WHEN reach IS NULL OR {start} >= reach THEN 1 ELSE 0 END)
    OVER (PARTITION BY {key} {order} ROWS UNBOUNDED PRECEDING) AS island
  FROM (
    SELECT *, MAX({end}) OVER (PARTITION BY {key} {order}
      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM {table}
    WHERE {kind} = 'session'
  ) AS reaches
) AS islands
GROUP BY {kind}, {key}, island"""


def stage_name(spec: TableSpec) -> str:
    return ident(f"aether_stage_{spec.name}")


def create_stage_sql(schema: str, spec: TableSpec) -> list[str]:
    # No ON COMMIT DROP (PostgreSQL-only); the stage is dropped explicitly in the same txn.
    stage = stage_name(spec)
    return [
        f"DROP TABLE IF EXISTS {stage}",
        f"CREATE TEMP TABLE {stage} (LIKE {ident(schema)}.{ident(spec.name)})",
    ]


def merge_sql(schema: str, spec: TableSpec) -> str:
    target = f"{ident(schema)}.{ident(spec.name)}"
    on = " AND ".join(f"t.{ident(c)} = s.{c}" for c in spec.identity)
    updates = ", ".join(f"{ident(c)} = s.{c}" for c in spec.column_names if c not in spec.identity)
    cols = ", ".join(ident(c) for c in spec.column_names)
    vals = ", ".join(f"s.{c}" for c in spec.column_names)
    return (
        f"MERGE INTO {target} AS t USING {stage_name(spec)} AS s ON {on} "
        f"WHEN MATCHED THEN UPDATE SET {updates} "
        f"WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({vals})"
    )


def delete_insert_sql(schema: str, spec: TableSpec) -> list[str]:
    """The classic Redshift upsert, equivalent to merge_sql inside one transaction."""
    target = f"{ident(schema)}.{ident(spec.name)}"
    stage = stage_name(spec)
    on = " AND ".join(f"{target}.{ident(c)} = {stage}.{c}" for c in spec.identity)
    cols = ", ".join(ident(c) for c in spec.column_names)
    return [
        f"DELETE FROM {target} USING {stage} WHERE {on}",
        f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage}",
    ]


def prune_not_newer_sql(schema: str, spec: TableSpec) -> str:
    """Drop staged rows whose stored version is the same or newer, before the upsert."""
    assert spec.version is not None
    target = f"{ident(schema)}.{ident(spec.name)}"
    stage = stage_name(spec)
    on = " AND ".join(f"{stage}.{ident(c)} = {target}.{ident(c)}" for c in spec.identity)
    v = ident(spec.version)
    return f"DELETE FROM {stage} USING {target} WHERE {on} AND {target}.{v} >= {stage}.{v}"


def fence_sql(schema: str) -> tuple[str, str, str]:
    """(hold, take, create): statements run first in a load transaction, in this order until
    one touches a row. hold: the fence is ours (this also serialises loads of one shard on its
    row lock); take: our token supersedes the stored one; create: no fence yet."""
    t = f"{ident(schema)}.{FENCE_TABLE}"
    hold = (f"UPDATE {t} SET loads = loads + 1 WHERE stream = %(stream)s AND shard = %(shard)s"
            " AND owner = %(owner)s AND lease_counter = %(counter)s AND spawned_ns = %(spawned)s")
    take = (f"UPDATE {t} SET owner = %(owner)s, lease_counter = %(counter)s,"
            " spawned_ns = %(spawned)s, loads = loads + 1"
            " WHERE stream = %(stream)s AND shard = %(shard)s AND ("
            "(owner = %(owner)s AND spawned_ns <= %(spawned)s)"
            " OR (owner <> %(owner)s AND lease_counter < %(counter)s))")
    create = (f"INSERT INTO {t} (stream, shard, owner, lease_counter, spawned_ns, loads)"
              " SELECT %(stream)s, %(shard)s, %(owner)s, %(counter)s, %(spawned)s, 1"
              f" WHERE NOT EXISTS (SELECT 1 FROM {t} WHERE stream = %(stream)s"
              " AND shard = %(shard)s)")
    return hold, take, create


_W = r"[a-z_][a-z0-9_]*"
_REDSHIFT_MERGE = re.compile(
    rf"MERGE INTO (?:{_W}\.)?{_W}(?: AS)? {_W} USING {_W}(?: AS)? {_W} ON (?P<on>.+?) "
    r"WHEN MATCHED THEN (?:UPDATE SET (?P<set>.+?)|DELETE) "
    r"WHEN NOT MATCHED THEN INSERT \((?P<cols>[^()]+)\) VALUES \((?P<vals>[^()]+)\)",
    re.IGNORECASE | re.DOTALL,
)
_FORBIDDEN = re.compile(
    r"\b(?:WHEN|ON\s+CONFLICT|DO\s+NOTHING|SELECT|REMOVE\s+DUPLICATES)\b", re.IGNORECASE
)


def redshift_merge_problems(sql: str) -> list[str]:
    """Parse-level check that a MERGE uses only the form Redshift accepts.

    PostgreSQL accepts more (WHEN MATCHED AND cond, several WHEN clauses, DO NOTHING, a
    subquery source); code tested only on PostgreSQL could use those and break on Redshift.
    """
    text = " ".join(sql.split())
    m = _REDSHIFT_MERGE.fullmatch(text)
    if m is None:
        return [
            "not of the form MERGE INTO t USING s ON .. WHEN MATCHED THEN UPDATE SET .. "
            "WHEN NOT MATCHED THEN INSERT (..) VALUES (..)"
        ]
    problems = []
    for part in ("on", "set", "cols", "vals"):
        chunk = m.group(part) or ""
        if _FORBIDDEN.search(chunk):
            problems.append(f"forbidden clause inside {part}: {chunk!r}")
    return problems


# ---------------------------------------------------------------- staging and dialects


class StagingStore(Protocol):
    """Where a batch's CSV is staged (S3 in production)."""

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def url(self, key: str) -> str: ...


class MemoryStagingStore:
    """In-process staging for tests and benchmarks."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.objects[key]

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def url(self, key: str) -> str:
        return f"memory://{key}"


class S3StagingStore:
    """Staging in an S3 bucket via a boto3 client (moto server in tests)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "redshift-staging/") -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix

    def put(self, key: str, data: bytes) -> None:
        # Plain overwrite: a replayed batch restages the same key with the same rows.
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def get(self, key: str) -> bytes:
        body = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]
        return bytes(body.read())

    def delete(self, key: str) -> None:
        # DeleteObject succeeds for a missing key too, so a repeat is harmless.
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"


class Dialect(Protocol):
    def copy_into_stage(
        self, cursor: Any, spec: TableSpec, staging: StagingStore, key: str
    ) -> None: ...


def _column_list(spec: TableSpec) -> str:
    return ", ".join(ident(c) for c in spec.column_names)


@dataclass(frozen=True, slots=True)
class RedshiftDialect:
    """Production: Redshift reads the staged object from S3 itself."""

    iam_role_arn: str
    region: str | None = None

    def copy_sql(self, spec: TableSpec, s3_url: str) -> tuple[str, list[str]]:
        sql = f"COPY {stage_name(spec)} ({_column_list(spec)}) FROM %s IAM_ROLE %s FORMAT AS CSV"
        params = [s3_url, self.iam_role_arn]
        sql += " NULL AS %s"
        params.append(NULL_TOKEN)
        if self.region:
            sql += " REGION %s"
            params.append(self.region)
        return sql, params

    def copy_into_stage(
        self, cursor: Any, spec: TableSpec, staging: StagingStore, key: str
    ) -> None:
        sql, params = self.copy_sql(spec, staging.url(key))
        cursor.execute(sql, params)


@dataclass(frozen=True, slots=True)
class PostgresDialect:
    """Local stand-in: the same staged bytes, streamed with COPY FROM STDIN."""

    def copy_sql(self, spec: TableSpec) -> str:
        return (
            f"COPY {stage_name(spec)} ({_column_list(spec)}) FROM STDIN "
            f"WITH (FORMAT csv, NULL '{NULL_TOKEN}')"
        )

    def copy_into_stage(
        self, cursor: Any, spec: TableSpec, staging: StagingStore, key: str
    ) -> None:
        data = io.BytesIO(staging.get(key))
        cursor.copy_expert(self.copy_sql(spec), data, size=1 << 20)  # 1 MiB reads, not 8 KiB
        # Redshift's COPY into an empty table updates statistics itself (STATUPDATE);
        # PostgreSQL does not, and without them it plans the MERGE as a sort-merge join.
        # Only the join columns: a full ANALYZE (payload included) cost more than the MERGE.
        cursor.execute(f"ANALYZE {stage_name(spec)} ({', '.join(spec.identity)})")


# ---------------------------------------------------------------- I/O shell


def migrate(conn: Any, schema: str, out: OutputSchema = DEFAULT_SCHEMA,
            aggregations: Sequence[str] = ()) -> None:
    """Create the schema, both tables of the output schema (no primary keys), the fence table
    and the merged view, and each declared aggregation's results table and merged view; add
    columns that tables of an earlier release (or contract) lack. Idempotent."""
    tables = (raw_table(out), RESULTS_TABLE)
    with conn, conn.cursor() as cur:
        for stmt in ddl_statements(schema, tables, aggregations):
            cur.execute(stmt)
        for spec in (*tables, *map(results_table, aggregations)):
            cur.execute("SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = %s AND table_name = %s", (schema, spec.name))
            have = {name for (name,) in cur.fetchall()}
            for col in spec.columns:
                if col.name not in have:
                    cur.execute(f"ALTER TABLE {ident(schema)}.{ident(spec.name)}"
                                f" ADD COLUMN {ident(col.name)} {col.sql_type}")


@dataclass(frozen=True, slots=True)
class ShardWriter:
    """Who loads: the stream and shard of the rows, and the writer's fence token."""

    stream: str
    shard: str
    token: FenceToken

    def params(self) -> dict[str, object]:
        t = self.token
        return {"stream": self.stream, "shard": self.shard, "owner": t.owner,
                "counter": t.lease_counter, "spawned": t.spawned_ns}


def hold_fence(cur: Any, schema: str, writer: ShardWriter) -> None:
    """First statements of a load: Fenced unless the writer's tenure is the shard's newest.
    The row lock taken here is held to the commit, so a newer tenure's claim waits for this
    load (and then refuses the next one), and two loads of one shard never interleave."""
    params = writer.params()
    for stmt in fence_sql(schema):
        cur.execute(stmt, params)
        if cur.rowcount == 1:
            return
    raise Fenced(f"{writer.shard}: a newer tenure holds the Redshift fence")


class RedshiftLoader:
    """Loads one deduplicated batch into one table in ONE transaction."""

    def __init__(
        self,
        schema: str,
        dialect: Dialect,
        staging: StagingStore,
        *,
        use_merge: bool = True,
    ) -> None:
        self.schema = ident(schema)
        self.dialect = dialect
        self.staging = staging
        self.use_merge = use_merge

    def upsert_sql(self, spec: TableSpec) -> list[str]:
        prune = [prune_not_newer_sql(self.schema, spec)] if spec.version else []
        upsert = [merge_sql(self.schema, spec)] if self.use_merge else delete_insert_sql(
            self.schema, spec)
        return prune + upsert

    def load(self, conn: Any, binding: TableBinding[RowT], rows: Sequence[RowT], key: str,
             writer: ShardWriter | None = None, deadline_s: float | None = None) -> int:
        """Stage, COPY, upsert, then delete the staged object; returns the number of distinct
        rows. Rolls back on error. With a writer, the load is refused (Fenced) unless its
        tenure holds the fence. With a deadline, the transaction (commit included) must end
        within it, or the connection is cut and DeadlineExceeded (retryable) is raised."""
        if not rows:
            return 0
        batch = dedupe_columns(binding.columns(rows), binding.identity)
        spec = binding.spec
        data = encode_csv(spec, table_columns(binding.fields, batch))
        # Without a batch key, the content names the object: a replay restages the same key.
        object_key = f"{spec.name}/{key or hashlib.sha256(data).hexdigest()[:32]}.csv"
        self.staging.put(object_key, data)
        # Outermost, so the rollback of a cut connection is inside the deadline too.
        with _bounded(conn, deadline_s), conn, conn.cursor() as cur:  # commit, or roll back
            if writer is not None:
                hold_fence(cur, self.schema, writer)
            for stmt in create_stage_sql(self.schema, spec):
                cur.execute(stmt)
            self.dialect.copy_into_stage(cur, spec, self.staging, object_key)
            for stmt in self.upsert_sql(spec):
                cur.execute(stmt)
            cur.execute(f"DROP TABLE {stage_name(spec)}")
        self._forget(object_key)
        return len(batch[binding.identity[0]])

    def _forget(self, object_key: str) -> None:
        """Delete a staged object whose load committed. Best effort: the rows are durable, and
        the lifecycle rule on the staging prefix expires an object left behind."""
        try:
            self.staging.delete(object_key)
        except Exception as exc:
            m.SINK_BATCHES.labels(STAGING_SINK, "delete_failed").inc()
            log.warning("staged object not deleted; the lifecycle rule will expire it",
                        extra={"object": self.staging.url(object_key), "error": describe(exc)})


STAGING_SINK = "redshift-staging"  # the sink label of staging-object deletes that failed


@contextlib.contextmanager
def _bounded(conn: Any, deadline_s: float | None) -> Iterator[None]:
    if deadline_s is None:
        yield
        return
    from consumer.sinks.clients import query_deadline  # local: the driver stays optional

    with query_deadline(conn, deadline_s):
        yield


def load_deadline_s(statement_timeout_ms: int, failover_time_ms: int) -> float:
    """The client-side bound on one load transaction: past the statement timeout (a server
    that answers cancels its own statement first), and below the failover time (a stale
    writer's load ends before a new owner could take the lease): halfway between the two.
    The settings already require statement_timeout_ms < failover_time_ms."""
    if not 0 < statement_timeout_ms < failover_time_ms:
        raise ValueError(f"need 0 < statement_timeout_ms ({statement_timeout_ms}) < "
                         f"failover_time_ms ({failover_time_ms})")
    return (statement_timeout_ms + failover_time_ms) / 2 / 1000


def retryable(exc: BaseException) -> bool:
    """consumer/sinks/errors.py's classification, plus one conflict of ours: two first loads
    of one shard racing to create its fence row (the only table with a key PostgreSQL
    enforces; on Redshift the same race is a 1023 serialization conflict)."""
    import psycopg2.errors  # local: keeps the pure core importable without the driver

    return is_retryable(exc) or isinstance(exc, psycopg2.errors.UniqueViolation)


class RedshiftSink(Generic[RowT]):
    """Commit step for one table: durable in Redshift when write_batch returns.

    Connection loss, serialization failures (concurrent shard loads), timeouts and
    staging-store outages are retried forever through `retrier` (classified by `retryable`);
    a broken connection is replaced. Other errors (bad SQL, permissions) propagate. With
    `deadline_s` (see load_deadline_s), each load transaction that a hung cluster leaves
    unanswered is cut, reconnected and retried instead of blocking forever.
    """

    def __init__(
        self,
        name: str,
        binding: TableBinding[RowT],
        loader: RedshiftLoader,
        connect: Callable[[], Any],
        retrier: Retrier | None = None,
        writer: ShardWriter | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.name = name
        self.binding = binding
        self.loader = loader
        self.writer = writer
        self.deadline_s = deadline_s
        self._connect = connect
        self._conn: Any = None
        # A given retrier keeps its own classifier (fixed when it was made).
        self.retrier = retrier or Retrier(name, retryable=retryable)

    def _load_once(self, rows: Sequence[RowT], batch_key: str) -> int:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        try:
            return self.loader.load(self._conn, self.binding, rows, batch_key, self.writer,
                                    self.deadline_s)
        except Exception as exc:
            if retryable(exc):  # a broken connection is replaced on the next attempt
                log.warning("load failed; reconnecting before the retry",
                            extra={"sink": self.name, "error": describe(exc)})
                self.close()
            raise

    def write_batch(self, rows: Sequence[RowT], batch_key: str) -> WriteOutcome:
        written = self.retrier.call(lambda: self._load_once(rows, batch_key))
        return WriteOutcome(written=written)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def raw_records_sink(
    loader: RedshiftLoader, connect: Callable[[], Any], retrier: Retrier | None = None
) -> RedshiftSink[RawRow]:
    return RedshiftSink("redshift-raw", RAW_BINDING, loader, connect, retrier)


def window_results_sink(
    loader: RedshiftLoader, connect: Callable[[], Any], retrier: Retrier | None = None
) -> RedshiftSink[ResultRow]:
    return RedshiftSink("redshift-results", RESULTS_BINDING, loader, connect, retrier)
