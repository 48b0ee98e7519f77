"""Operate on quarantined records: list them, and put them back on the stream after a fix.

Quarantine objects are written by the pipeline (consumer/sinks/layout.py, quarantine_line):
one NDJSON line per rejected record with its raw bytes (base64), provenance and reason.
Replay is idempotent per object and filter: after an object's records are put back, a marker
object is written with If-None-Match, and a marked object is skipped next time.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from consumer.aws import put_records
from consumer.sinks.layout import decode_body

MARKERS = "_replayed/"


@dataclass(frozen=True)
class Filter:
    reason: str | None = None
    stage: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        return self.reason in (None, row.get("reason")) and self.stage in (None, row.get("stage"))

    def replayable(self, row: dict[str, Any]) -> bool:
        """A document a sink refused (stage sink:...) is a window result, not a record of
        the stream: it is only put back when its stage is asked for by name."""
        is_sink = str(row.get("stage", "")).startswith("sink:")
        return self.matches(row) and (not is_sink or self.stage is not None)

    @property
    def tag(self) -> str:
        return f"{self.stage or 'any'}.{self.reason or 'any'}"


def quarantine_objects(s3: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if MARKERS not in obj["Key"]:
                yield obj["Key"]


def read_rows(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    return decode_body(key, s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@dataclass
class Summary:
    objects: int = 0
    records: int = 0
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[tuple[str, str], str] = field(default_factory=dict)


def summarize(s3: Any, bucket: str, prefix: str, flt: Filter) -> Summary:
    summary = Summary()
    for key in quarantine_objects(s3, bucket, prefix):
        summary.objects += 1
        for row in read_rows(s3, bucket, key):
            if flt.matches(row):
                summary.records += 1
                reason = (row["stage"], row["reason"])
                summary.by_reason[reason] += 1
                summary.examples.setdefault(reason, row["message"])
    return summary


@dataclass
class ReplayReport:
    objects: int = 0
    skipped_objects: int = 0
    records: int = 0


def replay(s3: Any, kinesis: Any, bucket: str, prefix: str, stream: str, flt: Filter,
           dry_run: bool = False) -> ReplayReport:
    """Put matching quarantined records back on `stream`, with their partition keys."""
    report = ReplayReport()
    for key in quarantine_objects(s3, bucket, prefix):
        marker = f"{prefix}{MARKERS}{key[len(prefix):]}.{flt.tag}"
        if _exists(s3, bucket, marker):
            report.skipped_objects += 1
            continue
        entries = [
            {"PartitionKey": row["partition_key"], "Data": base64.b64decode(row["data_b64"])}
            for row in read_rows(s3, bucket, key) if flt.replayable(row)
        ]
        report.objects += 1
        report.records += len(entries)
        if dry_run:
            continue
        for start in range(0, len(entries), 500):
            put_records(kinesis, stream, entries[start:start + 500])
        s3.put_object(Bucket=bucket, Key=marker, Body=str(len(entries)).encode(), IfNoneMatch="*")
    return report


def _exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
