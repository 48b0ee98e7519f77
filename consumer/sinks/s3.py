"""Durable, replay-safe S3 objects: the thin boto3 shell around consumer/sinks/layout.py.

Exactly-once for objects rests on two facts:
- a key names the shard positions it holds, and is written with `If-None-Match: *`, so
  an object is never replaced and a second writer of the same key gets 412;
- before the first write to a partition, the writer lists it: a replay after a crash
  skips every record an earlier attempt already made durable, instead of writing an
  overlapping object. After that, the writer remembers what it wrote itself.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from consumer.records.model import Position
from consumer.sinks.layout import (
    ObjectFormat,
    ObjectPlan,
    encode_body,
    object_key,
    parse_object_range,
    uncovered,
)

log = logging.getLogger(__name__)

Range = tuple[Position, Position]


class S3ObjectWriter:
    def __init__(self, client: Any, bucket: str, fmt: ObjectFormat = "ndjson") -> None:
        self._client = client
        self._bucket = bucket
        self.format = fmt
        self._durable: dict[str, list[Range]] = {}

    def write(self, plan: ObjectPlan) -> int:
        """Make every record of the plan durable; returns how many this call wrote."""
        remaining = uncovered(plan, self._durable_ranges(plan.partition_prefix))
        if not remaining.positions:
            return 0
        first, last = remaining.positions[0], remaining.positions[-1]
        key = object_key(plan.partition_prefix, first, last, self.format)
        written = self.put_if_absent(key, encode_body(remaining.lines, self.format))
        self._durable[plan.partition_prefix].append((first, last))
        return len(remaining.positions) if written else 0

    def put_if_absent(self, key: str, body: bytes) -> bool:
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                IfNoneMatch="*",
                ContentType="application/x-ndjson",
            )
            return True
        except ClientError as exc:
            # The key names its exact positions, so an existing object holds the same records.
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                log.info("object already durable, skipped", extra={"key": key})
                return False
            raise

    def _durable_ranges(self, partition_prefix: str) -> list[Range]:
        if partition_prefix not in self._durable:
            self._durable[partition_prefix] = list(self._list_ranges(partition_prefix))
        return self._durable[partition_prefix]

    def _list_ranges(self, partition_prefix: str) -> list[Range]:
        ranges = []
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self._bucket, Prefix=partition_prefix):
            for obj in page.get("Contents", []):
                parsed = parse_object_range(obj["Key"])
                if parsed:
                    ranges.append(parsed)
        return ranges
