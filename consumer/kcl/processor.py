"""The amazon_kclpy record processor: a thin adapter from the KCL protocol to ShardPipeline.

Rules it keeps:
- a checkpoint never passes a record that is not durable (ShardPipeline.checkpoint_position);
- process_records never returns before the batch is buffered, and blocks while a sink is
  down, so KCL fetching slows instead of memory growing;
- lease_lost stops all writes at once; shard_ended and shutdown_requested flush and checkpoint;
- an unexpected error exits the process: amazon_kclpy would otherwise log it and acknowledge
  the batch, and KCL would move on past records we never stored.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from amazon_kclpy.checkpoint_error import CheckpointError
from amazon_kclpy.v3 import processor

from consumer.aws import client
from consumer.commit.fencing import Fenced, ShardFence
from consumer.commit.state import SnapshotStore
from consumer.config import Settings
from consumer.kcl.checkpoint import Checkpointer, checkpoint_with_retry
from consumer.metrics import registry as m
from consumer.metrics.logs import bind_context, log_context
from consumer.pipeline import ShardPipeline, window_spec
from consumer.records.model import Position, RawRecord
from consumer.sinks.retry import StopRetrying
from consumer.sinks.routes import ShardRetriers, open_routes
from consumer.windows.engine import WindowEngine

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])


def exit_on_error(callback: F) -> F:
    """amazon_kclpy logs a callback's exception and acknowledges the message anyway, which
    would let KCL move past records we never stored. Exit instead: the daemon restarts the
    shard from its last checkpoint."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except StopRetrying:
            log.warning("write abandoned: lease lost")
        except Exception:
            log.exception("record processor failed; exiting so KCL replays from the checkpoint")
            logging.shutdown()
            os._exit(70)

    return wrapper  # type: ignore[return-value]


def to_raw_records(kcl_records: list[Any]) -> list[RawRecord]:
    return [
        RawRecord(
            data=base64.b64decode(r.data),
            partition_key=r.partition_key,
            position=Position(int(r.sequence_number), int(r.sub_sequence_number or 0)),
            arrival_ms=r.timestamp_millis,
        )
        for r in kcl_records
    ]


def _start_position(seq: str | None, sub: int | None) -> Position | None:
    # KCL sends sentinels (TRIM_HORIZON, LATEST, SHARD_END) before a first real checkpoint.
    if seq is None or not str(seq).isdigit():
        return None
    return Position(int(seq), int(sub or 0))


class ShardProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
    def __init__(self, settings: Settings, s3_client: Any) -> None:
        self._settings = settings
        self._s3_client = s3_client
        self._pipeline: ShardPipeline | None = None
        self._state: SnapshotStore | None = None
        self._retriers = ShardRetriers()
        self._metrics: m.ShardMetrics | None = None
        self._fence: ShardFence | None = None
        self._lost = False
        self.shard_id = ""

    # --- KCL callbacks ------------------------------------------------------------------
    @exit_on_error
    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = initialize_input.shard_id
        start = _start_position(initialize_input.sequence_number,
                                initialize_input.sub_sequence_number)
        bind_context(shard=self.shard_id)
        s = self._settings
        routes = open_routes(s, self.shard_id, self._retriers, _now_ms, self._s3_client)
        self._state = SnapshotStore(self._s3_client, s.s3.bucket, s.s3.state_prefix,
                                    s.stream.app_name, self.shard_id)
        engine = self._restore_engine(start) if s.windows.enabled else None
        self._pipeline = ShardPipeline(s, self.shard_id, routes, engine, start)
        self._fence = self._acquire_fence()
        self._metrics = m.ShardMetrics(self.shard_id)
        self._metrics.lease_acquired()
        log.info("initialized", extra={"start": str(start) if start else "none",
                                       "routes": [r.name for r in routes.all()]})

    @exit_on_error
    def process_records(self, process_records_input: Any) -> None:
        if self._lost:
            # Fenced before KCL noticed: ignore, never checkpoint; the new owner replays.
            return
        pipeline, metrics = self._require()
        started = time.monotonic()
        records = to_raw_records(process_records_input.records)
        now_ms = _now_ms()
        batch = ({"first": str(records[0].position), "last": str(records[-1].position),
                  "records": len(records)} if records else {})
        with log_context(batch=batch):  # every line logged for this batch names its range
            if records:
                metrics.batch_received((r.position.sequence for r in records),
                                       (len(r.data) for r in records))
                pipeline.ingest(records, now_ms)
            else:
                pipeline.tick(now_ms)
            m.MILLIS_BEHIND_LATEST.labels(self.shard_id).set(
                process_records_input.millis_behind_latest or 0)
            if pipeline.flush_due(now_ms):
                self._flush_and_checkpoint(process_records_input.checkpointer)
        pipeline.report_gauges(now_ms)
        m.PROCESS_RECORDS_DURATION_SECONDS.labels(self.shard_id).observe(time.monotonic() - started)
        metrics.heartbeat()

    def lease_lost(self, lease_lost_input: Any) -> None:
        # Another worker owns the shard now: stop at once, write nothing more.
        self._lost = True
        self._retriers.stop()
        self._pipeline = None
        if self._metrics:
            self._metrics.lease_released()
        log.warning("lease lost; buffered records are left to the new owner")

    @exit_on_error
    def shard_ended(self, shard_ended_input: Any) -> None:
        if self._lost:
            return
        pipeline, _ = self._require()
        if not self._still_owner():
            return
        pipeline.close(_now_ms())  # the parent's windows are final; children emit their own
        pipeline.flush()
        # At shard end KCL wants a checkpoint with no position: it records SHARD_END.
        self._checkpoint(shard_ended_input.checkpointer, None)
        log.info("shard ended; checkpointed SHARD_END")

    @exit_on_error
    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        if self._pipeline is None:
            return
        self._flush_and_checkpoint(shutdown_requested_input.checkpointer)
        if self._metrics:
            self._metrics.lease_released()
        log.info("shutdown requested; flushed and checkpointed")

    # --- helpers --------------------------------------------------------------------------
    def _require(self) -> tuple[ShardPipeline, m.ShardMetrics]:
        if self._pipeline is None or self._metrics is None:
            raise RuntimeError("record processor used before initialize or after lease loss")
        return self._pipeline, self._metrics

    def _restore_engine(self, start: Position | None) -> WindowEngine:
        assert self._state is not None
        data = self._state.load(start) if start else None
        if data is not None:
            return WindowEngine.restore(data)
        if start is not None:
            log.warning("no window snapshot for the checkpoint; windows restart empty",
                        extra={"checkpoint": str(start)})
        return WindowEngine(window_spec(self._settings), self.shard_id)

    def _acquire_fence(self) -> ShardFence | None:
        table = self._settings.commit.manifest_table
        if not table:
            return None
        fence = ShardFence(client("dynamodb"), table, self.shard_id,
                           f"{socket.gethostname()}:{os.getpid()}")
        log.info("fence acquired", extra={"epoch": fence.acquire()})
        return fence

    def _still_owner(self) -> bool:
        """The commit step's fence: False (and writing stops) once another worker has the
        shard, even if KCL has not told us yet."""
        if self._fence is None:
            return True
        retrier = self._retriers("dynamodb-fence")
        retrier.retryable = lambda exc: not isinstance(exc, Fenced)  # DynamoDB errors retry
        try:
            retrier.call(self._fence.check)
        except Fenced:
            log.warning("fenced: another worker owns the shard; stopping writes")
            self.lease_lost(None)
            return False
        return True

    def _flush_and_checkpoint(self, checkpointer: Checkpointer) -> None:
        pipeline, _ = self._require()
        if not self._still_owner():
            return
        pipeline.flush()
        position = pipeline.checkpoint_position()
        if position is None:
            return
        previous = pipeline.frontier.checkpointed
        if pipeline.engine is not None:
            # The snapshot must be the state after exactly the records up to `position`.
            if position != pipeline.last_seen:
                return
            snapshot = pipeline.engine.snapshot()
            state = self._state
            assert state is not None
            self._retriers("s3-state").call(lambda: state.save(position, snapshot))
        if self._checkpoint(checkpointer, position):
            pipeline.frontier.mark_checkpointed(position)
            if pipeline.engine is not None and previous is not None and self._state:
                self._state.forget(previous)

    def _checkpoint(self, checkpointer: Checkpointer, position: Position | None) -> bool:
        outcome = checkpoint_with_retry(checkpointer, position)
        m.CHECKPOINTS.labels(self.shard_id, outcome).inc()
        if outcome == "lease_lost":
            self.lease_lost(None)
        return outcome == "ok"


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["CheckpointError", "ShardProcessor", "to_raw_records"]
