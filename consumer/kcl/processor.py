"""The amazon_kclpy record processor: translates KCL callbacks into ShardPipeline calls.

The commit protocol is the pipeline's Committer (consumer/commit/committer.py); this module only
decides WHEN to commit and what each callback means:
- process_records never returns before the batch is buffered, and blocks while a sink is down,
  so KCL fetching slows instead of memory growing;
- a processor whose worker does not own the shard in KCL's lease table (it started late, or the
  lease moved while it was blocked) is fenced: it stops writing and never checkpoints again, and
  answers every callback at once until KCL delivers lease_lost (KCL's renewer loses a lease whose
  owner changed within failover_time / 3, so this is bounded; the new owner is already working);
- lease_lost stops all writes at once; shard_ended and shutdown_requested commit;
- an unexpected error exits the process: amazon_kclpy would otherwise log it and acknowledge
  the batch, and KCL would move on past records we never stored. The shard host answers for
  the dead process and hands the lease back, so only this shard restarts, from its checkpoint.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from amazon_kclpy.v3 import processor

from consumer.aws import client
from consumer.commit.lease import LeaseTable, Ownership
from consumer.commit.state import SnapshotStore
from consumer.config import ConfigError, Settings
from consumer.kcl.liveness import LagLiveness
from consumer.metrics import registry as m
from consumer.metrics.logs import bind_context, log_context
from consumer.pipeline import ShardPipeline, contract_from, window_spec
from consumer.records.model import Position, RawRecord
from consumer.sinks.errors import classify, describe, error_code
from consumer.sinks.fence import Fenced
from consumer.sinks.retry import StopRetrying
from consumer.sinks.routes import ShardRetriers, open_routes
from consumer.transform.config import load_chain
from consumer.transform.stage import TransformStage, open_stage
from consumer.transform.tables import Refresher
from consumer.windows.aggconfig import load_aggregations
from consumer.windows.aggregations import Aggregation, AggregationSet, is_set_snapshot
from consumer.windows.engine import WindowEngine

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., None])


def exit_on_error(callback: F) -> F:
    """amazon_kclpy logs a callback's exception and acknowledges the message anyway, which
    would let KCL move past records we never stored. Exit instead, non-zero, like any crash:
    the shard host (consumer/kcl/host.py) answers for the dead processor, hands the lease back,
    and KCL resumes the shard from its last checkpoint. A fence is not an error: the processor
    stops writing."""

    @functools.wraps(callback)
    def wrapper(self: ShardProcessor, *args: Any, **kwargs: Any) -> None:
        try:
            callback(self, *args, **kwargs)
        except Fenced as exc:
            self.fence(str(exc))
        except StopRetrying:
            log.warning("write abandoned: lease lost")
        except Exception as exc:
            log.exception("record processor failed; exiting so KCL replays from the checkpoint",
                          extra={"error": describe(exc)})
            _tell_host(failure_note(exc))
            logging.shutdown()
            os._exit(FATAL_EXIT)

    return wrapper  # type: ignore[return-value]


FATAL_EXIT = 70  # EX_SOFTWARE


def failure_note(exc: BaseException) -> str:
    """A short, bounded label of a fatal error for the host's metrics: its kind and code
    (`auth:AccessDenied`), or its class when it has no code."""
    return f"{classify(exc)}:{error_code(exc) or type(exc).__name__}"[:120]


def _tell_host(note: str) -> None:
    fd = os.environ.get("AETHERSTREAM_FAILURE_FD")  # the host's pipe; absent when run alone
    if fd and fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), note.encode("utf-8", "replace") + b"\n")


def to_raw_records(kcl_records: list[Any]) -> list[RawRecord]:
    """amazon_kclpy Records as RawRecords; consumer/kcl/protocol.py delivers RawRecords."""
    if kcl_records and isinstance(kcl_records[0], RawRecord):
        return kcl_records
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
    def __init__(self, settings: Settings, s3_client: Any, dynamodb: Any = None,
                 spawned_ns: int | None = None, config_path: str | None = None) -> None:
        self._settings = settings
        self._config_path = config_path  # the settings file: its [[transform]] chain
        self._s3_client = s3_client
        self._dynamodb = dynamodb
        self._spawned_ns = spawned_ns if spawned_ns is not None else time.time_ns()
        self._pipeline: ShardPipeline | None = None
        self._retriers = ShardRetriers()
        self._metrics: m.ShardMetrics | None = None
        self.fenced = False
        self.shard_id = ""

    # --- KCL callbacks ------------------------------------------------------------------
    @exit_on_error
    def initialize(self, initialize_input: Any) -> None:
        self.shard_id = initialize_input.shard_id
        start = _start_position(initialize_input.sequence_number,
                                initialize_input.sub_sequence_number)
        bind_context(shard=self.shard_id)
        self._metrics = m.ShardMetrics(self.shard_id)
        # The lag gauge rises while a callback blocks (consumer/kcl/liveness.py).
        self._liveness = LagLiveness(m.MILLIS_BEHIND_LATEST.labels(self.shard_id)).start()
        s = self._settings
        # First: a bad chain stops the start, not a record.
        transform = load_transform(self._config_path, s, lambda: self._s3_client)
        declared = load_declared(self._config_path, s)
        ownership = Ownership(LeaseTable(self._dynamodb or client("dynamodb"), s.stream.app_name),
                              self.shard_id, s.kcl.worker_id, self._spawned_ns)
        token = self._retriers("dynamodb-lease").call(ownership.claim)  # Fenced: started late
        snapshots = SnapshotStore(self._s3_client, s.s3.bucket, s.s3.state_prefix,
                                  s.stream.app_name, self.shard_id)
        routes = open_routes(s, self.shard_id, self._retriers, _now_ms, self._s3_client, token,
                             [a.name for a in declared])
        engine, aggs, generation = (self._restore_engine(snapshots, start, declared)
                                    if s.windows.enabled else (None, None, 0))
        self._pipeline = ShardPipeline(s, self.shard_id, routes, engine, start,
                                       ownership=ownership, snapshots=snapshots,
                                       retriers=self._retriers, generation=generation,
                                       transform=transform, aggregations=aggs)
        self._metrics.lease_acquired()
        log.info("initialized", extra={"start": str(start) if start else "none",
                                       "lease_counter": token.lease_counter,
                                       "routes": [r.name for r in routes.all()],
                                       "transform": [st.name for st in transform.chain.steps]
                                       if transform else [],
                                       "aggregations": [a.name for a in declared]})

    @exit_on_error
    def process_records(self, process_records_input: Any) -> None:
        if self._pipeline is None:
            return  # fenced or lost: the new owner replays; never checkpoint
        pipeline, metrics = self._pipeline, self._require_metrics()
        started = time.monotonic()
        records = to_raw_records(process_records_input.records)
        now_ms = _now_ms()
        batch = ({"first": str(records[0].position), "last": str(records[-1].position),
                  "records": len(records)} if records else {})
        # every line logged for this batch names its range; the lag gauge moves meanwhile
        with log_context(batch=batch), self._liveness.busy():
            if records:
                if pipeline.ticked:
                    # Idle ticks decided what is late; make that durable before any record
                    # is judged by it, so a replay decides the same (consumer/commit/state.py).
                    pipeline.commit(process_records_input.checkpointer)
                metrics.batch_received((r.position.sequence for r in records),
                                       (len(r.data) for r in records))
                pipeline.ingest(records, now_ms)
            else:
                pipeline.tick(now_ms)
            self._liveness.batch(process_records_input.millis_behind_latest or 0)
            if pipeline.flush_due(now_ms):
                pipeline.commit(process_records_input.checkpointer)
        pipeline.report_gauges(now_ms)
        m.PROCESS_RECORDS_DURATION_SECONDS.labels(self.shard_id).observe(time.monotonic() - started)
        metrics.heartbeat()

    def lease_lost(self, lease_lost_input: Any) -> None:
        # Another worker owns the shard now: stop at once, write nothing more.
        self._stop("lease lost; buffered records are left to the new owner")

    @exit_on_error
    def shard_ended(self, shard_ended_input: Any) -> None:
        if self._pipeline is None:
            return
        self._pipeline.end_shard(shard_ended_input.checkpointer, _now_ms())
        if self._pipeline.transform is not None:
            self._pipeline.transform.close()
        log.info("shard ended; checkpointed SHARD_END")

    @exit_on_error
    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        if self._pipeline is None:
            return
        self._pipeline.commit(shutdown_requested_input.checkpointer)
        self._stop("shutdown requested; committed")

    # --- states ---------------------------------------------------------------------------
    def fence(self, reason: str) -> None:
        """Another tenure owns the shard while KCL has not said so: stop writing, never
        checkpoint, and wait for lease_lost (the new owner replays from its checkpoint)."""
        self.fenced = True
        m.FENCED.labels(self.shard_id or "unknown").inc()
        self._stop(f"fenced: {reason}; waiting for KCL to reassign the shard")

    def _stop(self, why: str) -> None:
        self._retriers.stop()
        if self._pipeline is not None and self._pipeline.transform is not None:
            self._pipeline.transform.close()
        self._pipeline = None
        if self._metrics:
            self._metrics.lease_released()
        log.warning(why)

    def _require_metrics(self) -> m.ShardMetrics:
        if self._metrics is None:
            raise RuntimeError("record processor used before initialize")
        return self._metrics

    def _restore_engine(self, snapshots: SnapshotStore, start: Position | None,
                        declared: Sequence[Aggregation]) -> tuple[
                            WindowEngine, AggregationSet | None, int]:
        """The default engine and the declared aggregations' set as of the checkpoint."""
        found = self._retriers("s3-state").call(lambda: snapshots.load(start)) if start else None
        fresh = AggregationSet(declared, self.shard_id) if declared else None
        if found is not None:
            data, generation = found
            engine_data, aggs = data, fresh
            if is_set_snapshot(data):
                restored, default = AggregationSet.restore(declared, self.shard_id, data,
                                                           _now_ms())
                assert default is not None  # the set is snapshotted with the default engine
                engine_data, aggs = default, restored if declared else None
            return WindowEngine.restore(engine_data, _now_ms()), aggs, generation
        if start is not None:
            log.warning("no window snapshot for the checkpoint; windows restart empty",
                        extra={"checkpoint": str(start)})
        return WindowEngine(window_spec(self._settings), self.shard_id), fresh, 0


def load_declared(config_path: str | None, settings: Settings) -> tuple[Aggregation, ...]:
    """The settings file's [[aggregation]] tables; ConfigError (logged one line per problem)
    ends the processor at initialize."""
    try:
        declared = load_aggregations(config_path, settings)
        if declared and not settings.windows.enabled:
            raise ConfigError(f"file {config_path}: [[aggregation]] needs windows.enabled = "
                              "true")
    except ConfigError as exc:
        for line in str(exc).splitlines():
            log.error("aggregations not loaded: %s", line)
        raise
    return declared


def load_transform(config_path: str | None, settings: Settings,
                   s3: Callable[[], Any]) -> TransformStage | None:
    """The settings file's [[transform]] chain, loaded once (expressions compiled, lookup
    tables read, plug-ins imported), its refresh thread started; None without one. Raises
    ConfigError, logged one line per problem, which ends the processor at initialize."""
    if not config_path:
        return None
    try:
        configured = load_chain(config_path, s3=s3)
        if configured.chain.steps and not settings.windows.enabled:
            raise ConfigError(f"file {config_path}: [[transform]] needs windows.enabled = "
                              "true: the windows alone see the chain's output")
    except ConfigError as exc:
        for line in str(exc).splitlines():
            log.error("transform chain not loaded: %s", line)
        raise
    if not configured.chain.steps:
        return None
    lookups = configured.chain.lookups()
    refresher = Refresher(configured.sources, {n: st.table for n, st in lookups.items()},
                          time.time(), s3) if lookups else None
    return open_stage(configured.chain, contract_from(settings), refresher)


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["ShardProcessor", "load_transform", "to_raw_records"]
