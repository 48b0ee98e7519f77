"""Read back what the sinks hold and count record identities, so losses and duplicates show.

Used by the demo, the end-to-end tests and operators checking a bucket by hand.
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

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
        for line in gzip.decompress(body).splitlines():
            row = orjson.loads(line)
            self.identities[(row["shard"], row["sequence"], row["sub_sequence"])] += 1
            self.rows.append(row)
        self.seen_keys.add(key)

    @property
    def lines(self) -> int:
        return sum(self.identities.values())

    @property
    def distinct(self) -> int:
        return len(self.identities)

    @property
    def duplicates(self) -> int:
        return self.lines - self.distinct
