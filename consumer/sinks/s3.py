"""Durable, replay-safe S3 objects: the thin boto3 shell around consumer/sinks/layout.py.

Exactly-once for objects rests on three facts:
- a key names the shard positions it holds (results objects: the range of window order), and
  is written with `If-None-Match: *`, so an object is never replaced and a second writer of
  the same key gets 412;
- every object is reserved in the shard's manifest (consumer/sinks/manifest.py) before it is
  written, and a writer repeats the objects reserved there exactly, so a replay with other
  batch boundaries, or an old owner's late PUT, writes the same object, never an overlap;
- the manifest is taken with a fence token, so a writer that lost the shard is refused
  before it reserves anything new.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from consumer.records.model import Position
from consumer.sinks.layout import (
    ObjectFormat,
    ObjectPlan,
    P,
    Reserved,
    WindowOrder,
    cut,
    cut_ranges,
    encode_body,
    results_key,
)
from consumer.sinks.manifest import ShardManifest

log = logging.getLogger(__name__)

CONTENT_TYPES: dict[str, str] = {"ndjson": "application/x-ndjson",
                                 "parquet": "application/vnd.apache.parquet"}


class S3ObjectWriter:
    def __init__(self, client: Any, bucket: str, fmt: ObjectFormat = "ndjson",
                 manifest: ShardManifest | None = None, max_records: int | None = None) -> None:
        self._client = client
        self._bucket = bucket
        self.format = fmt
        self.manifest = manifest
        self._max_records = max_records

    def write(self, plans: list[ObjectPlan[Position]]) -> int:
        """Make every record of the plans durable; returns how many this call wrote."""
        reserved = self.manifest.reserved if self.manifest else []
        objects = [(key, obj) for plan in plans
                   for key, obj in cut(plan, reserved, self.format, self._max_records)]
        if self.manifest is not None:
            self.manifest.reserve(_reservations(objects))
        return self._put_all(objects)

    def write_results(self, plans: list[ObjectPlan[WindowOrder]], kind: str) -> int:
        """Make every final result of the plans durable (whole windows, in window order);
        returns how many this call wrote."""
        reserved = self.manifest.results if self.manifest else []
        fmt = self.format
        objects = [(key, obj) for plan in plans for key, obj in cut_ranges(
            plan, reserved, lambda pre, first, last: results_key(pre, kind, first, last, fmt),
            self._max_records)]
        if self.manifest is not None:
            self.manifest.reserve([], _reservations(objects))
        return self._put_all(objects)

    def _put_all(self, objects: list[tuple[str, ObjectPlan[P]]]) -> int:
        written = 0
        for key, obj in objects:
            if self.put_if_absent(key, encode_body(obj.lines, self.format)):
                written += len(obj.positions)
        return written

    def put_if_absent(self, key: str, body: bytes) -> bool:
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                IfNoneMatch="*",
                ContentType=CONTENT_TYPES[self.format],
            )
            return True
        except ClientError as exc:
            # The key names its exact positions, so an existing object holds the same records.
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                log.info("object already durable, skipped", extra={"key": key})
                return False
            raise


def _reservations(objects: list[tuple[str, ObjectPlan[P]]]) -> list[Reserved[P]]:
    return [Reserved(key, obj.positions[0], obj.positions[-1]) for key, obj in objects]
