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
import time
from collections.abc import Callable
from typing import Any, TypeVar

from amazon_kclpy.checkpoint_error import CheckpointError
from amazon_kclpy.v3 import processor

from consumer.config import Settings
from consumer.kcl.checkpoint import Checkpointer, checkpoint_with_retry
from consumer.kcl.retry import RetryUntilStopped, StopRetrying
from consumer.metrics import registry as m
from consumer.metrics.logs import bind_context
from consumer.pipeline import ShardPipeline
from consumer.records.model import Position, RawRecord
from consumer.sinks.s3 import S3ObjectWriter

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
        self._retry = RetryUntilStopped()
        self._metrics: m.ShardMetrics | None = None
        self.shard_id = ""

    # --- KCL callbacks ------------------------------------------------------------------
    @exit_on_error
    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = initialize_input.shard_id
        start = _start_position(
            initialize_input.sequence_number, initialize_input.sub_sequence_number
        )
        bind_context(shard=self.shard_id)
        writer = S3ObjectWriter(self._s3_client, self._settings.s3.bucket)
        self._pipeline = ShardPipeline(self._settings, self.shard_id, writer, self._retry, start)
        self._metrics = m.ShardMetrics(self.shard_id)
        self._metrics.lease_acquired()
        log.info(
            "initialized", extra={"start": str(start) if start else "none", "pid": os.getpid()}
        )

    @exit_on_error
    def process_records(self, process_records_input: Any) -> None:
        pipeline, metrics = self._require()
        started = time.monotonic()
        records = to_raw_records(process_records_input.records)
        now_ms = int(time.time() * 1000)
        if records:
            metrics.batch_received(
                (r.position.sequence for r in records), (len(r.data) for r in records)
            )
            pipeline.ingest(records, now_ms)
        m.MILLIS_BEHIND_LATEST.labels(self.shard_id).set(
            process_records_input.millis_behind_latest or 0
        )
        if pipeline.flush_due(now_ms):
            self._flush_and_checkpoint(process_records_input.checkpointer)
        m.CHECKPOINT_LAG_RECORDS.labels(self.shard_id).set(pipeline.frontier.pending)
        m.PROCESS_RECORDS_DURATION_SECONDS.labels(self.shard_id).observe(time.monotonic() - started)
        metrics.heartbeat()

    def lease_lost(self, lease_lost_input: Any) -> None:
        # Another worker owns the shard now: stop at once, write nothing more.
        self._retry.stop()
        self._pipeline = None
        if self._metrics:
            self._metrics.lease_released()
        log.warning("lease lost; buffered records are left to the new owner")

    @exit_on_error
    def shard_ended(self, shard_ended_input: Any) -> None:
        pipeline, _ = self._require()
        pipeline.flush(int(time.time() * 1000))
        # At shard end KCL wants a checkpoint with no position: it records SHARD_END.
        self._checkpoint(shard_ended_input.checkpointer, None, final=True)
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

    def _flush_and_checkpoint(self, checkpointer: Checkpointer) -> None:
        pipeline, _ = self._require()
        pipeline.flush(int(time.time() * 1000))
        position = pipeline.checkpoint_position()
        if position is not None and self._checkpoint(checkpointer, position, final=False):
            pipeline.frontier.mark_checkpointed(position)

    def _checkpoint(
        self, checkpointer: Checkpointer, position: Position | None, final: bool
    ) -> bool:
        outcome = checkpoint_with_retry(checkpointer, position)
        m.CHECKPOINTS.labels(self.shard_id, outcome).inc()
        if outcome == "lease_lost":
            self.lease_lost(None)
        return outcome == "ok"


__all__ = ["CheckpointError", "ShardProcessor", "to_raw_records"]
