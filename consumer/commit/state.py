"""Window-engine snapshots, in S3 (the thin shell).

The key is a function of the shard, the checkpoint position and a generation, so a new owner
finds the snapshot from the position KCL gives it in initialize: no pointer table to keep in
step. Order makes it safe: the snapshot is durable before the checkpoint is written, so every
checkpoint a worker can resume from has its state.

Generations: an idle tick moves the watermark with processing time, which a replay cannot
repeat. So when ticks changed the windows, the state is snapshotted again at the same position
(the next generation) before any later record is processed, and a new owner restores the
newest generation: it makes the same decisions the old owner made.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from consumer.records.model import Position
from consumer.sinks.layout import position_token

log = logging.getLogger(__name__)


class SnapshotStore:
    def __init__(self, client: Any, bucket: str, prefix: str, app: str, shard_id: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = f"{prefix}{app}/shard={shard_id}/"

    def key(self, position: Position, generation: int = 0) -> str:
        return f"{self._prefix}{position_token(position)}.{generation:06d}.snapshot"

    def save(self, position: Position, data: bytes, generation: int = 0) -> bool:
        """False if that generation exists already (written by another tenure)."""
        try:
            self._client.put_object(Bucket=self._bucket, Key=self.key(position, generation),
                                    Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise
            return False

    def load(self, position: Position) -> tuple[bytes, int] | None:
        """The newest generation at `position`, with its number, or None."""
        prefix = f"{self._prefix}{position_token(position)}."
        keys = [obj["Key"] for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self._bucket, Prefix=prefix) for obj in page.get("Contents", [])
                if obj["Key"].endswith(".snapshot")]
        if not keys:
            return None
        newest = max(keys)  # fixed-width generations sort as numbers
        body = self._client.get_object(Bucket=self._bucket, Key=newest)["Body"]
        return bytes(body.read()), int(newest[len(prefix):].split(".")[0])

    def forget(self, position: Position, generations: int) -> None:
        """Delete the snapshots a newer checkpoint has superseded."""
        for g in range(generations + 1):
            self._client.delete_object(Bucket=self._bucket, Key=self.key(position, g))
