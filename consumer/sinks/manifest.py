"""A shard's S3 commit manifest: the objects it will write, reserved before they are written.

One small JSON object per shard, next to its window snapshots, updated with compare-and-swap
(`If-Match` on its ETag; `If-None-Match` for the first). Before a writer PUTs archive or
quarantine objects it reserves them here: their keys and the positions they hold. Then:
- a writer that lost the shard can still land a PUT it reserved before the new owner took the
  manifest, but the new owner repeats exactly that object (same key, same records: the plan is
  a function of the shard's records), so the late PUT is the same object, never an overlap;
- once the new owner has taken the manifest (its fence token, consumer/sinks/fence.py, written
  into it), the old owner's next reservation fails its compare-and-swap and sees a token that
  supersedes its own: it is Fenced before it writes anything new.
Reservations at or below the shard's checkpoint are dropped: a new owner never replays them.
This is the design sketch's write-ahead manifest, kept in S3 itself, so that no second store
can disagree with the objects it describes.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from botocore.exceptions import ClientError

from consumer.records.model import Position
from consumer.sinks.fence import Fenced, FenceToken
from consumer.sinks.layout import Reserved

log = logging.getLogger(__name__)


def _pos(p: Position) -> list[str | int]:
    return [str(p.sequence), p.sub_sequence]  # sequence numbers exceed JSON-safe ints


def _load_pos(v: list[Any]) -> Position:
    return Position(int(v[0]), int(v[1]))


class ShardManifest:
    def __init__(self, client: Any, bucket: str, key: str, token: FenceToken | None) -> None:
        self._client = client
        self._bucket = bucket
        self.key = key
        self._token = token
        self._etag: str | None = None
        self._loaded = False
        self.reserved: list[Reserved] = []
        self.checkpointed: Position | None = None  # the committer sets it after a checkpoint

    def load(self) -> None:
        """Read the manifest; Fenced if a newer tenure owns it."""
        try:
            obj = self._client.get_object(Bucket=self._bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            self._etag, self.reserved = None, []
            self._loaded = True
            return
        body = orjson.loads(obj["Body"].read())
        self._etag = obj["ETag"]
        self.reserved = [Reserved(r[0], _load_pos(r[1]), _load_pos(r[2]))
                         for r in body["reserved"]]
        stored = FenceToken(*body["token"]) if body.get("token") else None
        if stored and self._token and not self._token.supersedes(stored):
            raise Fenced(f"{self.key}: the manifest is held by a newer tenure ({stored.owner})")
        self._loaded = True

    def ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def last_reserved(self) -> Position | None:
        self.ensure_loaded()
        return max((r.last for r in self.reserved), default=None)

    def reserve(self, objects: list[Reserved], checkpointed: Position | None) -> None:
        """Add these objects (dropping what the checkpoint covers), with compare-and-swap; a
        lost swap re-reads the manifest and tries again unless a newer tenure holds it."""
        self.ensure_loaded()
        while True:
            keep = [r for r in self.reserved if checkpointed is None or r.last > checkpointed]
            known = {r.key for r in keep}
            merged = keep + [o for o in objects if o.key not in known]
            token = self._token
            body = orjson.dumps({
                "token": [token.owner, token.lease_counter, token.spawned_ns] if token else None,
                "reserved": [[r.key, _pos(r.first), _pos(r.last)] for r in merged],
            })
            cond = {"IfMatch": self._etag} if self._etag else {"IfNoneMatch": "*"}
            try:
                resp = self._client.put_object(Bucket=self._bucket, Key=self.key, Body=body,
                                               ContentType="application/json", **cond)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed",
                                                                     "ConditionalRequestConflict"):
                    raise
                log.info("manifest changed under us; re-reading", extra={"key": self.key})
                self.load()  # Fenced here if the writer in between was a newer tenure
                continue
            self._etag, self.reserved = resp["ETag"], merged
            return
