"""A shard's S3 commit manifest: the objects it will write, reserved before they are written.

One small JSON object per shard, next to its window snapshots, updated with compare-and-swap
(`If-Match` on its ETag; `If-None-Match` for the first). Before a writer PUTs archive or
quarantine objects it reserves them here: their keys and the positions they hold; before it
PUTs results objects, their keys and the range of window order (WindowOrder) they hold. Then:
- a writer that lost the shard can still land a PUT it reserved before the new owner took the
  manifest, but the new owner repeats exactly that object (same key, same records: the plan is
  a function of the shard's records), so the late PUT is the same object, never an overlap;
- once the new owner has taken the manifest (its fence token, consumer/sinks/fence.py, written
  into it), the old owner's next reservation fails its compare-and-swap and sees a token that
  supersedes its own: it is Fenced before it writes anything new.
Reservations the shard's checkpoint covers are dropped: a new owner never replays them. For
records that is "last position at or below the checkpoint"; for results, "last window at or
below the newest window this writer had delivered when it checkpointed" (those windows are
final in the checkpoint's snapshot, so no replay emits them again). A results reservation is
kept by window order, not by the record position it was made at: an idle tick can finalize a
window with no new record, and such a reservation must stay until its window has been passed.
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
from consumer.sinks.layout import P, Reserved, WindowOrder

log = logging.getLogger(__name__)


def _pos(p: Position) -> list[str | int]:
    return [str(p.sequence), p.sub_sequence]  # sequence numbers exceed JSON-safe ints


def _load_pos(v: list[Any]) -> Position:
    return Position(int(v[0]), int(v[1]))


Window = tuple[int, int]  # (end_ms, start_ms): a window's place in the shard's window order


def _window(o: WindowOrder) -> Window:
    return (o.end_ms, o.start_ms)


class ShardManifest:
    def __init__(self, client: Any, bucket: str, key: str, token: FenceToken | None) -> None:
        self._client = client
        self._bucket = bucket
        self.key = key
        self._token = token
        self._etag: str | None = None
        self._loaded = False
        self.reserved: list[Reserved[Position]] = []  # archive and quarantine objects
        self.results: list[Reserved[WindowOrder]] = []  # window-results objects
        # The committer sets both after a checkpoint: its position, and the newest window
        # whose final results were durable then.
        self.checkpointed: Position | None = None
        self.results_checkpointed: Window | None = None

    def load(self) -> None:
        """Read the manifest; Fenced if a newer tenure owns it."""
        try:
            obj = self._client.get_object(Bucket=self._bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            self._etag, self.reserved, self.results = None, [], []
            self._loaded = True
            return
        body = orjson.loads(obj["Body"].read())
        self._etag = obj["ETag"]
        self.reserved = [Reserved(r[0], _load_pos(r[1]), _load_pos(r[2]))
                         for r in body["reserved"]]
        self.results = [Reserved(r[0], WindowOrder(*r[1]), WindowOrder(*r[2]))
                        for r in body.get("results", ())]
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

    def last_reserved_window(self, prefix: str) -> Window | None:
        """The newest window of the results objects reserved under this prefix."""
        self.ensure_loaded()
        return max((_window(r.last) for r in self.results if r.key.startswith(prefix)),
                   default=None)

    def reserve(self, objects: list[Reserved[Position]],
                results: list[Reserved[WindowOrder]] | None = None) -> None:
        """Add these objects (dropping what the checkpoint covers), with compare-and-swap; a
        lost swap re-reads the manifest and tries again unless a newer tenure holds it."""
        self.ensure_loaded()
        while True:
            done, done_window = self.checkpointed, self.results_checkpointed
            keep = [r for r in self.reserved if done is None or r.last > done]
            keep_results = [r for r in self.results
                            if done_window is None or _window(r.last) > done_window]
            merged, merged_results = _merge(keep, objects), _merge(keep_results, results or [])
            token = self._token
            body = orjson.dumps({
                "token": [token.owner, token.lease_counter, token.spawned_ns] if token else None,
                "reserved": [[r.key, _pos(r.first), _pos(r.last)] for r in merged],
                "results": [[r.key, list(r.first), list(r.last)] for r in merged_results],
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
            self._etag, self.reserved, self.results = resp["ETag"], merged, merged_results
            return


def _merge(keep: list[Reserved[P]], new: list[Reserved[P]]) -> list[Reserved[P]]:
    known = {r.key for r in keep}
    return keep + [o for o in new if o.key not in known]
