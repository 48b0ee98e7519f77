"""Window-engine snapshots, one per checkpoint, in S3 (the thin shell).

The key is a function of the shard and the checkpoint position, so a new owner finds the
snapshot from the position KCL gives it in initialize: no pointer table to keep in step.
Order makes it safe: the snapshot is durable before the checkpoint is written, so every
checkpoint a worker can resume from has its snapshot.
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

    def key(self, position: Position) -> str:
        return f"{self._prefix}{position_token(position)}.snapshot"

    def save(self, position: Position, data: bytes) -> None:
        try:
            self._client.put_object(Bucket=self._bucket, Key=self.key(position), Body=data,
                                    IfNoneMatch="*")
        except ClientError as exc:
            # Same position, same records processed: the existing snapshot is equivalent.
            if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
                raise

    def load(self, position: Position) -> bytes | None:
        try:
            body = self._client.get_object(Bucket=self._bucket, Key=self.key(position))["Body"]
            return bytes(body.read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def forget(self, position: Position) -> None:
        """Delete a snapshot a newer checkpoint has superseded."""
        self._client.delete_object(Bucket=self._bucket, Key=self.key(position))
