"""Read back what the sinks hold and count record identities, so losses and duplicates show.

Used by the demo, the end-to-end tests and operators checking a bucket by hand.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
