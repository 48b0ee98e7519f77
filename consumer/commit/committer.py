"""The commit protocol of one shard, in one place: fence, drain, snapshot, checkpoint, forget.

Order is what makes it safe:
1. every route is drained, and before EACH batch is made durable the processor confirms, in
   KCL's lease table, that its worker still owns the shard (consumer/commit/lease.py); the
   sinks refuse a stale writer themselves for the write already past that check (Redshift's
   fence row, OpenSearch's external versions);
2. the window engine's snapshot for exactly that position is durable before the checkpoint, so
   every checkpoint a new owner can resume from has its state (consumer/commit/state.py);
3. the lease is confirmed once more, then KCL checkpoints the position; only then is the
   previous snapshot deleted.
A checkpoint is only taken when every route has drained: it never passes a record that is not
durable in every sink. Anything that fails leaves the checkpoint where it was; the next owner
replays from there and the sinks absorb the replay by identity.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from consumer.commit.checkpoint import Checkpointer, checkpoint_with_retry
from consumer.commit.lease import Ownership
from consumer.commit.state import SnapshotStore
from consumer.metrics import registry as m
from consumer.records.model import Position
from consumer.sinks.fence import Fenced
from consumer.sinks.manifest import ShardManifest
from consumer.sinks.routes import ResultsBuffer, Route, Routes, ShardRetriers

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, shard_id: str, routes: Routes, ownership: Ownership | None,
                 snapshots: SnapshotStore | None, retriers: ShardRetriers,
                 checkpointed: Position | None, generation: int = 0) -> None:
        self.shard_id = shard_id
        self.routes = routes
        self._ownership = ownership
        self._snapshots = snapshots
        self._retriers = retriers
        self.checkpointed = checkpointed
        self.generation = generation  # of the snapshot at `checkpointed`
        # Per results route: the newest window made durable (each route has its own window
        # order and manifest: one per aggregation).
        self._results_durable: dict[str, tuple[int, int] | None] = {}

    def confirm_owner(self) -> None:
        """Fenced unless this worker still holds the shard's lease (DynamoDB errors retry)."""
        if self._ownership is not None:
            self._retriers("dynamodb-lease").call(self._ownership.confirm)

    def drain(self, position: Position | None) -> dict[str, int]:
        """Make everything buffered up to `position` (the last record seen) durable, route
        by route, quarantine last (deliveries can add sink rejections to it). Returns the
        items written per route."""
        return {route.name: self._drain(route, position) for route in self.routes.all()}

    def _drain(self, route: Route[Any], position: Position | None) -> int:
        manifest, written = route.manifest, 0
        if manifest is not None and self._replaying(route, manifest, position):
            return 0
        take = route.buffer.take_all if manifest is not None else route.buffer.take_batch
        while (batch := take()) is not None:
            self.confirm_owner()
            started = time.monotonic()
            outcome = route.deliver(batch.items, batch.last_position)
            route.buffer.mark_durable(batch)
            for rejected in outcome.rejected:
                self.routes.quarantine.buffer.add(rejected, rejected.record.position,
                                                  len(rejected.record.data), 0)
            written += outcome.written
            m.SINK_FLUSH_DURATION_SECONDS.labels(route.name).observe(time.monotonic() - started)
            m.SINK_BATCHES.labels(route.name, "ok").inc()
            m.SINK_RECORDS.labels(route.name).inc(outcome.written)
            if isinstance(route.buffer, ResultsBuffer):
                self._results_durable[route.name] = route.buffer.newest
        if route is self.routes.archive:
            m.RECORDS_ARCHIVED.labels(self.shard_id).inc(written)
        return written

    def _replaying(self, route: Route[Any], manifest: ShardManifest,
                   position: Position | None) -> bool:
        """Objects a writer before us reserved are repeated exactly, so they must be whole:
        True (wait) until the replay has passed the last of them. Records compare by
        position; final window results by window order, which a replay repeats (all of a
        window's final results come out of one engine step, later windows in later steps)."""
        retry = self._retriers("s3-manifest")
        buffer = route.buffer
        if isinstance(buffer, ResultsBuffer):
            window = retry.call(functools.partial(manifest.last_reserved_window, buffer.prefix))
            newest = buffer.newest if len(buffer) else None  # nothing buffered: no wait
            if window is None or newest is None or newest >= window:
                return False
            until = f"window end {window[0]} start {window[1]}"
        else:
            last = retry.call(manifest.last_reserved)
            if last is None or (position is not None and position >= last):
                return False
            until = str(last)
        log.info("replaying up to the objects reserved before us",
                 extra={"route": route.name, "until": until})
        return True

    def commit(self, checkpointer: Checkpointer, position: Position | None,
               snapshot: Callable[[], bytes] | None, ticked: bool = False) -> bool:
        """Drain, then checkpoint at `position` (the last record seen) with the window state
        as of it. `ticked`: idle ticks changed the windows since the last snapshot, which must
        be snapshotted again even if no record came (the next generation at the same position).
        False if nothing new was made durable as a checkpoint or a snapshot."""
        self.drain(position)
        if position is None or any(len(route.buffer) for route in self.routes.all()):
            return False  # nothing seen, or something waits (objects reserved before us)
        if self.checkpointed is not None and position <= self.checkpointed:
            return ticked and self._resnapshot(position, snapshot)
        previous, generations = self.checkpointed, self.generation
        if snapshot is not None and self._snapshots is not None:
            self._save(position, 0, snapshot())
        if not self._checkpoint(checkpointer, position):
            return False
        self.checkpointed, self.generation = position, 0
        if self.routes.manifest is not None:  # its next reservation drops what these cover
            self.routes.manifest.checkpointed = position
        self._results_checkpointed()
        if previous is not None and snapshot is not None and self._snapshots is not None:
            self._snapshots.forget(previous, generations)
        return True

    def _resnapshot(self, position: Position, snapshot: Callable[[], bytes] | None) -> bool:
        if snapshot is None or self._snapshots is None:
            return False
        self._save(position, self.generation + 1, snapshot())
        self.generation += 1
        self._results_checkpointed()  # the new generation has these windows final
        return True

    def _results_checkpointed(self) -> None:
        """Each results route's manifest: its next reservation drops the windows the
        checkpoint's snapshot has final (the newest this route had made durable)."""
        for route in self.routes.windows:
            if route.manifest is not None:
                route.manifest.results_checkpointed = self._results_durable.get(route.name)

    def _save(self, position: Position, generation: int, data: bytes) -> None:
        self.confirm_owner()
        store = self._snapshots
        assert store is not None
        if not self._retriers("s3-state").call(lambda: store.save(position, data, generation)):
            self.confirm_owner()  # another tenure wrote this generation: Fenced, unless stale
            raise RuntimeError(f"{self.shard_id}: snapshot generation {generation} at "
                               f"{position} exists; a stale writer raced this one")

    def end_shard(self, checkpointer: Checkpointer, position: Position | None) -> None:
        """Shard end: everything drained, then KCL's SHARD_END checkpoint (no position)."""
        self.drain(position)
        if not self._checkpoint(checkpointer, None):
            raise RuntimeError(f"{self.shard_id}: SHARD_END was not checkpointed")

    def _checkpoint(self, checkpointer: Checkpointer, position: Position | None) -> bool:
        """True once KCL took it. A refused checkpoint (throttled, failed) leaves the records
        uncheckpointed: the next commit tries again, or the next owner replays them."""
        self.confirm_owner()
        outcome = checkpoint_with_retry(checkpointer, position)
        m.CHECKPOINTS.labels(self.shard_id, outcome).inc()
        if outcome == "lease_lost":
            raise Fenced(f"{self.shard_id}: KCL refused the checkpoint, the lease is gone")
        return outcome == "ok"
