"""Read back what the sinks hold and count record identities, so losses and duplicates show.

Used by the demo, the end-to-end tests and operators checking a bucket by hand.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consumer.records.contract import Contract, split_path
from consumer.records.versions import VersionRule, get_path, select
from consumer.sinks.layout import decode_body

Identity = tuple[str, str, int]


@dataclass
class ObjectCounter:
    """Reads each immutable object once and counts the identities in it."""

    s3: Any
    bucket: str
    prefix: str
    seen_keys: set[str] = field(default_factory=set)
    identities: Counter[Identity] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def refresh(self) -> None:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                if obj["Key"] not in self.seen_keys:
                    self._read(obj["Key"])

    def _read(self, key: str) -> None:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        for row in decode_body(key, body):
            self.identities[(row["shard"], row["sequence"], row["sub_sequence"])] += 1
            self.rows.append(row)
        self.seen_keys.add(key)

    def distinct_where(self, stage_is_window: bool) -> int:
        """Quarantine: late records (stage "window") are also in the archive, so the
        reconciliation counts them apart from the records that were rejected outright."""
        return len({(r["shard"], r["sequence"], r["sub_sequence"]) for r in self.rows
                    if (r.get("stage") == "window") == stage_is_window})

    @property
    def lines(self) -> int:
        return sum(self.identities.values())

    @property
    def distinct(self) -> int:
        return len(self.identities)

    @property
    def duplicates(self) -> int:
        return self.lines - self.distinct


@dataclass(frozen=True)
class TableCount:
    rows: int
    distinct: int
    value_count: int = 0  # window results: sum of per-window counts

    @property
    def duplicates(self) -> int:
        return self.rows - self.distinct


def redshift_counts(dsn: str, schema: str) -> dict[str, TableCount]:
    """Rows and distinct identities per table. The tables have no primary keys (as in
    Redshift), so a duplicate load would show here as rows > distinct."""
    import psycopg2

    from consumer.sinks.redshift import RAW_TABLE, RESULTS_TABLE, ident

    out = {}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for spec in (RAW_TABLE, RESULTS_TABLE):
            key = ", ".join(ident(c) for c in spec.identity)
            extra = ", coalesce(sum(value_count), 0)" if spec is RESULTS_TABLE else ", 0"
            cur.execute(
                f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {key} "
                f"FROM {ident(schema)}.{ident(spec.name)}) d){extra} "
                f"FROM {ident(schema)}.{ident(spec.name)}"
            )
            row = cur.fetchone()
            assert row is not None  # an aggregate query always returns one row
            rows, distinct, value_count = row
            out[spec.name] = TableCount(int(rows), int(distinct), int(value_count))
    conn.close()
    return out


def opensearch_count(url: str, prefix: str) -> int:
    """Documents behind the results alias, after a refresh."""
    from opensearchpy import OpenSearch

    from consumer.sinks.opensearch import RESULTS, alias_name

    client = OpenSearch(hosts=[url], timeout=30)
    alias = alias_name(prefix, RESULTS)
    if not client.indices.exists_alias(name=alias):
        return 0
    client.indices.refresh(index=alias)
    return int(client.count(index=alias)["count"])


def s3_result_rows(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            rows += decode_body(obj["Key"], body)
    return rows


# ---------------------------------------------------------------- content, not counts


@dataclass(frozen=True)
class ResultContent:
    """What one sink says about one window result: where it is and what it counts."""

    shard: str
    start_ms: int
    key: tuple[str, ...]
    count: int
    sum: float
    min: float
    max: float
    is_final: bool


def s3_results_by_id(rows: list[dict[str, Any]]) -> dict[str, list[ResultContent]]:
    """The lines of the S3 results objects, grouped by result id (a list: duplicates show)."""
    out: dict[str, list[ResultContent]] = {}
    for r in rows:
        out.setdefault(r["result_id"], []).append(ResultContent(
            r["shard"], int(r["window_start_ms"]), tuple(r["key"]), int(r["count"]),
            float(r["sum"]), float(r["min"]), float(r["max"]), bool(r["is_final"])))
    return out


def redshift_results_by_id(dsn: str, schema: str) -> dict[str, list[ResultContent]]:
    import orjson
    import psycopg2

    from consumer.sinks.redshift import RESULTS_TABLE, ident

    out: dict[str, list[ResultContent]] = {}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT result_id, shard_id, window_start_ms, window_key, value_count, value_sum, "
            f"value_min, value_max, is_final FROM {ident(schema)}.{ident(RESULTS_TABLE.name)}")
        for rid, shard, start, key, count, total, lo, hi, final in cur.fetchall():
            out.setdefault(rid, []).append(ResultContent(
                shard, int(start), tuple(orjson.loads(key)), int(count), float(total),
                float(lo), float(hi), bool(final)))
    conn.close()
    return out


def opensearch_results_by_id(url: str, prefix: str) -> dict[str, list[ResultContent]]:
    """Every document behind the results alias (after a refresh), paged by search_after on
    the result id, so no result hides past a page limit."""
    from opensearchpy import OpenSearch

    from consumer.sinks.opensearch import RESULTS, alias_name

    client = OpenSearch(hosts=[url], timeout=30)
    alias = alias_name(prefix, RESULTS)
    out: dict[str, list[ResultContent]] = {}
    if not client.indices.exists_alias(name=alias):
        return out
    client.indices.refresh(index=alias)
    after: list[Any] | None = None
    while True:
        body: dict[str, Any] = {"query": {"match_all": {}}, "size": 1000,
                                "sort": [{"result_id": "asc"}]}
        if after is not None:
            body["search_after"] = after
        hits = client.search(index=alias, body=body)["hits"]["hits"]
        for hit in hits:
            s = hit["_source"]
            out.setdefault(s["result_id"], []).append(ResultContent(
                s["shard_id"], int(s["window_start"]), tuple(s["key"]), int(s["count"]),
                float(s["sum"]), float(s["min"]), float(s["max"]), bool(s["is_final"])))
        if len(hits) < 1000:
            return out
        after = hits[-1]["sort"]


def redshift_raw_identities(dsn: str, schema: str) -> Counter[Identity]:
    """Raw records in Redshift by (shard, sequence, sub-sequence), counted: duplicates show."""
    import psycopg2

    from consumer.sinks.redshift import RAW_TABLE, ident

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT shard, sequence_number, sub_sequence_number "
                    f"FROM {ident(schema)}.{ident(RAW_TABLE.name)}")
        found: Counter[Identity] = Counter(
            (shard, seq, int(sub)) for shard, seq, sub in cur.fetchall())
    conn.close()
    return found


def result_differences(by_sink: dict[str, dict[str, list[ResultContent]]]) -> list[str]:
    """Every way the sinks disagree on window results: a result id missing from a sink,
    held twice by one, or with different content. Empty when they all hold the same."""
    problems: list[str] = []
    ids = set().union(*by_sink.values()) if by_sink else set()
    for rid in sorted(ids):
        seen = {sink: results.get(rid, []) for sink, results in by_sink.items()}
        for sink, contents in seen.items():
            if len(contents) != 1:
                problems.append(f"{rid}: {len(contents)} copies in {sink}")
        distinct = {c for contents in seen.values() for c in contents}
        if len(distinct) > 1:
            problems.append(f"{rid}: sinks disagree: {seen}")
    return problems


def shard_order(row: dict[str, Any]) -> tuple[str, int, int]:
    return row["shard"], int(row["sequence"]), int(row["sub_sequence"])


def expected_results(archive_rows: list[dict[str, Any]], late: set[Identity], size_ms: int,
                     contract: Contract,
                     ) -> dict[tuple[str, int, tuple[str, ...]], ResultContent]:
    """The final tumbling-window results the archive implies: every archived record that was
    not quarantined as late, in its shard's window, folded in shard order (as the engine
    does). Keyed by (shard, window start, key). Each payload's key and value are read at the
    paths of its schema version (the first whose selector holds, as the decoder picks it),
    so a v1 `temp` and a v2 `value` both count; the event time is the archive's column."""
    read = _reader(contract)
    acc: dict[tuple[str, int, tuple[str, ...]], list[float]] = {}
    for row in sorted(archive_rows, key=shard_order):
        if (row["shard"], row["sequence"], row["sub_sequence"]) in late:
            continue
        key, value = read(row["payload"])
        start = row["event_ts_ms"] // size_ms * size_ms
        acc.setdefault((row["shard"], start, key), []).append(value)
    return {
        (shard, start, key): ResultContent(shard, start, key, len(v), sum(v), min(v), max(v),
                                           True)
        for (shard, start, key), v in acc.items()
    }


def _reader(contract: Contract) -> Callable[[dict[str, Any]], tuple[tuple[str, ...], float]]:
    """A payload -> (key, value), at the paths of the payload's schema version."""
    rules = [VersionRule(v, contract.version_field) for v in contract.versions]
    version_segs = split_path(contract.version_field) if contract.version_field else ()

    def read(payload: dict[str, Any]) -> tuple[tuple[str, ...], float]:
        keys, value = contract.key_fields, contract.value_field
        if rules:
            rule = select(payload, rules, version_segs)
            if rule is None:  # the decoder quarantines such a record: it is never archived
                raise ValueError(f"an archived payload of no declared version: {payload!r}")
            keys, value = rule.version.key_fields, rule.version.value_field
        return (tuple(str(get_path(payload, split_path(f))) for f in keys),
                float(get_path(payload, split_path(value))))  # type: ignore[arg-type]

    return read
