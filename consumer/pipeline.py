"""One shard's path: records -> decode -> [transform] -> windows -> routes (buffers + sinks)
-> commit.

This is the shell that wires the pure stages together for one shard. It knows nothing of
the KCL protocol (consumer/kcl/processor.py adapts that), so tests drive it with plain
RawRecords against real servers. The commit protocol (drain every route, snapshot the
windows, checkpoint) belongs to its Committer (consumer/commit/committer.py): a checkpoint
is taken only when every route has drained, with the engine's snapshot for that exact
position durable first, so a new owner restores the snapshot and resumes after the
checkpoint (see consumer/windows/engine.py, "Replay after a failover").

With a transform chain (the settings file's [[transform]] tables), the windows see the
chain's output and the archive and raw routes the records as received (with the contract's
reading of the output where there is one): consumer/transform/stage.py. Without one, decode
and windows stay one pass.

Declared aggregations (the settings file's [[aggregation]] tables, consumer/windows/
aggregations.py) run beside the default engine over the same records (their fields: the
chain's output, else the record's JSON), each result going to the routes of its own
aggregation. A record one of them skips, or that is late for it, stays archived and is
counted (aetherstream_records_filtered_total, filter "aggregation:<name>" or
"late:<name>"); only the default aggregation's late records are quarantined, so quarantine
holds each record at most once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

import orjson

from consumer.commit.checkpoint import Checkpointer
from consumer.commit.committer import Committer
from consumer.commit.lease import Ownership
from consumer.commit.state import SnapshotStore
from consumer.config import Settings
from consumer.metrics import registry as m
from consumer.records.contract import Contract
from consumer.records.decode import decode_batch, schema_drift
from consumer.records.gcpause import paused_gc
from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.sinks.buffer import ByteBudget
from consumer.sinks.layout import window_sort_key
from consumer.sinks.routes import RESULT_SIZE, Route, Routes, ShardRetriers
from consumer.transform.columns import FieldBatch
from consumer.transform.stage import TransformStage, decode_with_columns, decode_with_fields
from consumer.windows.aggregations import AggregationSet, AggStep
from consumer.windows.engine import WindowEngine
from consumer.windows.model import StepOutput, WindowResult, WindowSpec

log = logging.getLogger(__name__)


def contract_from(settings: Settings) -> Contract:
    c = settings.contract
    return Contract(key_fields=c.key_fields, ts_field=c.ts_field, value_field=c.value_field,
                    ts_format=c.ts_format, version_field=c.version_field,
                    versions=c.schema_versions())


def window_spec(settings: Settings) -> WindowSpec:
    w = settings.windows
    return WindowSpec(
        kind=w.kind, size_ms=w.size_ms, slide_ms=w.slide_ms or None, gap_ms=w.gap_ms or None,
        allowed_lateness_ms=w.allowed_lateness_ms, out_of_orderness_ms=w.out_of_orderness_ms,
        idle_timeout_ms=w.idle_timeout_ms or None, quantiles=w.quantiles,
    )


class ShardPipeline:
    def __init__(self, settings: Settings, shard_id: str, routes: Routes,
                 engine: WindowEngine | None, checkpointed: Position | None = None, *,
                 ownership: Ownership | None = None, snapshots: SnapshotStore | None = None,
                 retriers: ShardRetriers | None = None, generation: int = 0,
                 transform: TransformStage | None = None,
                 aggregations: AggregationSet | None = None) -> None:
        if transform is not None and engine is None:
            raise ValueError("a transform chain needs windows: they alone see its output")
        if aggregations is not None and engine is None:
            raise ValueError("declared aggregations need windows (windows.enabled = true)")
        self.aggregations = aggregations
        self.shard_id = shard_id
        self.transform = transform
        self._contract = contract_from(settings)
        self.routes = routes
        self.engine = engine
        self.committer = Committer(shard_id, routes, ownership, snapshots,
                                   retriers or ShardRetriers(), checkpointed, generation)
        self.budget = ByteBudget(settings.flush.max_buffer_bytes)
        self._max_state_bytes = settings.windows.max_state_bytes
        self._last_seen: Position | None = checkpointed
        self._uncheckpointed = 0  # records seen since the last checkpoint
        # Idle ticks changed the windows since the last snapshot: see consumer/commit/state.py.
        self.ticked = False

    # --- stages ---------------------------------------------------------------------------
    def ingest(self, records: Sequence[RawRecord], now_ms: int) -> None:
        """Decode a KCL batch and buffer everything it produced. Nothing is dropped: each
        record lands in the archive or in quarantine (or, removed by a transform filter, in
        its counter), and windows see every valid one."""
        out: StepOutput | None = None
        declared: AggStep | None = None  # the declared aggregations' step
        if self.transform is not None:
            events, rejected, out, declared = self._transformed(records, now_ms)
        elif self.engine is not None and self.aggregations is not None:
            events, rejected, out, declared = self._decoded_once(records, now_ms)
        elif self.engine is not None:
            # One pass decodes and windows a clean batch (same results as the two steps).
            events, rejected, out = self.engine.process_records(records, self._contract, now_ms)
        else:
            events, rejected = decode_batch(records, self._contract)
        m.count_schema_drift(schema_drift(records, self._contract))
        if records:
            self._last_seen = records[-1].position
            self._uncheckpointed += len(records)
        positions, sizes = _positions(events), _sizes(events)
        for route in (self.routes.archive, *self.routes.raw):
            route.buffer.add_many(events, positions, sizes, now_ms)
        self._add(self.routes.quarantine, rejected, now_ms)
        # Each record once, whatever the number of routes holding it (they share it).
        self.budget.charge(sum(map(len, (r.data for r in records)))
                           + RECORD_OVERHEAD * len(records))
        if out is not None:
            self._emit(out, now_ms)
        if declared is not None:
            self._emit_declared(declared, now_ms)

    def _decoded_once(self, records: Sequence[RawRecord], now_ms: int) -> tuple[
            list[Event], list[Rejected], StepOutput, AggStep | None]:
        """Decode once for every aggregation: the default engine takes the decoder's
        columns, the declared ones the fields it read. One GC pause over all of it: a
        collection between the steps would scan every window's state."""
        assert self.engine is not None
        with paused_gc():
            events, rejected, fields, columns = decode_with_columns(records, self._contract)
            out = self.engine.process_columns(*columns, events, now_ms) \
                if columns is not None else self.engine.process(events, now_ms)
            return events, rejected, out, self._step_declared(fields, events, now_ms)

    def _step_declared(self, fields: Sequence[Any] | FieldBatch | None,
                       events: Sequence[Event], now_ms: int) -> AggStep | None:
        """The declared aggregations over a batch's Events (fields: what the decoder or
        the chain read of them; None: parse each record, which the decoder accepted as
        one JSON object). Call it with cyclic GC paused."""
        if self.aggregations is None or not events:  # only tick() is an idle step
            return None
        if isinstance(fields, FieldBatch):
            return self.aggregations.process_columns(fields, events, now_ms)
        rows = fields if fields is not None else [orjson.loads(e.record.data) for e in events]
        return self.aggregations.process(list(zip(rows, events, strict=True)), now_ms)

    def _emit_declared(self, step: AggStep, now_ms: int) -> None:
        for name, n in step.skipped.items():
            m.RECORDS_FILTERED.labels(self.shard_id, f"aggregation:{name}").inc(n)
        for name, out in step.outputs.items():
            self._emit(out, now_ms, name)

    def _transformed(self, records: Sequence[RawRecord], now_ms: int) -> tuple[
            list[Event], list[Rejected], StepOutput, AggStep | None]:
        """Decode, the chain, then windows over what it kept (consumer/transform/stage.py
        says what the archive and quarantine get)."""
        assert self.engine is not None and self.transform is not None
        with paused_gc():
            staged = self.transform.apply(*decode_with_fields(records, self._contract))
            # A batch that leaves the windows nothing is not an idle tick (tick() is): the
            # watermark must not move by processing time on it, or a replay batched
            # otherwise would judge lateness otherwise.
            out = self.engine.process(staged.events, now_ms) if staged.events else \
                StepOutput([], [])
            fields = staged.columns if staged.columns is not None else staged.fields
            declared = self._step_declared(fields, staged.events, now_ms)
        for name, n in staged.filtered.items():
            m.RECORDS_FILTERED.labels(self.shard_id, name).inc(n)
        return staged.archive, staged.rejected, out, declared

    def tick(self, now_ms: int) -> None:
        """An empty KCL batch: processing time moves idle windows on."""
        if self.engine is not None:
            before = self.engine.watermark_ms
            out = self.engine.tick(now_ms)
            self.ticked |= bool(out.results) or self.engine.watermark_ms != before
            self._emit(out, now_ms)
        if self.aggregations is not None:
            marks = self._watermarks()
            for name, step in self.aggregations.tick(now_ms).items():
                self.ticked |= bool(step.results)
                self._emit(step, now_ms, name)
            self.ticked |= self._watermarks() != marks

    def _watermarks(self) -> list[int | None]:
        assert self.aggregations is not None
        return [e.watermark_ms for e in self.aggregations.engines.values()]

    def close(self, now_ms: int) -> None:
        """Shard end: the parent's contribution to every window is final."""
        if self.engine is not None:
            self._emit(self.engine.close_all(), now_ms)
        if self.aggregations is not None:
            for name, out in self.aggregations.close_all().items():
                self._emit(out, now_ms, name)

    def _emit(self, out: StepOutput, now_ms: int, aggregation: str = "") -> None:
        self._check_state()
        if aggregation:
            if out.late:
                m.RECORDS_FILTERED.labels(self.shard_id, f"late:{aggregation}").inc(
                    len(out.late))
        else:
            self._add(self.routes.quarantine, out.late, now_ms)
            if out.late:
                m.LATE_RECORDS.labels(self.shard_id).inc(len(out.late))
        if not out.results or self._last_seen is None:
            return
        m.WINDOW_RESULTS_EMITTED.labels(self.shard_id).inc(len(out.results))
        n, at = len(out.results), self._last_seen
        self.budget.charge(RESULT_SIZE * n)
        for route in self.routes.results:
            if route.aggregation == aggregation:
                route.buffer.add_many(out.results, [at] * n, [RESULT_SIZE] * n, now_ms)
        finals = final_in_order(out.results)
        for window_route in self.routes.windows:
            if window_route.aggregation == aggregation:
                window_route.buffer.add_many(finals, [at] * len(finals),
                                             [RESULT_SIZE] * len(finals), now_ms)

    def _add(self, route: Route[Any], items: Sequence[Any], now_ms: int) -> None:
        route.buffer.add_many(items, _positions(items), _sizes(items), now_ms)

    # --- commit ---------------------------------------------------------------------------
    def flush_due(self, now_ms: int) -> bool:
        return self.budget.over_budget() or any(
            r.buffer.should_flush(now_ms) for r in self.routes.all())

    def flush(self) -> dict[str, int]:
        """Make everything buffered durable, without checkpointing."""
        written = self.committer.drain(self._last_seen)
        self._release_if_drained()
        return written

    def _release_if_drained(self) -> None:
        if not any(len(r.buffer) for r in self.routes.all()):
            self.budget.release(self.budget.used_bytes)

    def _check_state(self) -> None:
        engine = self.engine
        held = (engine.state_bytes if engine is not None else 0) + (
            self.aggregations.state_bytes if self.aggregations is not None else 0)
        if held > self._max_state_bytes:
            raise WindowStateTooLarge(
                f"{self.shard_id}: open window state is about {held} bytes, over "
                f"windows.max_state_bytes = {self._max_state_bytes}: fewer keys or shorter "
                "windows, a larger limit with more task memory, or fewer leases per task")

    def commit(self, checkpointer: Checkpointer) -> bool:
        """Drain every route, snapshot the windows, checkpoint the last record seen."""
        done = self.committer.commit(checkpointer, self._last_seen, self._snapshot(),
                                     self.ticked)
        self._release_if_drained()
        if done:
            self._uncheckpointed, self.ticked = 0, False
        return done

    def _snapshot(self) -> Callable[[], bytes] | None:
        """The windows' state: the default engine's own bytes (as before there were
        declared aggregations), or every engine's in one AggregationSet snapshot."""
        engine, aggs = self.engine, self.aggregations
        if engine is None:
            return None
        if aggs is None:
            return engine.snapshot
        return lambda: aggs.snapshot(engine.snapshot())

    def end_shard(self, checkpointer: Checkpointer, now_ms: int) -> None:
        """Shard end: the parent's windows are final (children emit their own), then
        SHARD_END is checkpointed once everything is durable."""
        self.committer.confirm_owner()
        self.close(now_ms)
        self.committer.end_shard(checkpointer, self._last_seen)

    @property
    def last_seen(self) -> Position | None:
        return self._last_seen

    def report_gauges(self, now_ms: int) -> None:
        for route in self.routes.all():
            m.SINK_BUFFER_BYTES.labels(route.name, self.shard_id).set(route.buffer.pending_bytes)
        m.CHECKPOINT_LAG_RECORDS.labels(self.shard_id).set(self._uncheckpointed)
        if self.engine is not None:
            # Every engine of the shard: the state limit (_check_state) counts them all.
            engines = [self.engine, *(self.aggregations.engines.values()
                                      if self.aggregations is not None else ())]
            m.OPEN_WINDOWS.labels(self.shard_id).set(sum(e.open_windows for e in engines))
            m.WINDOW_STATE_BYTES.labels(self.shard_id).set(sum(e.state_bytes for e in engines))
            wm = self.engine.watermark_ms
            if wm is not None:
                m.WATERMARK_LAG_SECONDS.labels(self.shard_id).set(max(0.0, (now_ms - wm) / 1000))


# What a buffered record holds beyond its bytes: its RawRecord, Event, position and buffer
# entries, its key and partition key shared with its batch (consumer/records/decode.py,
# consumer/kcl/protocol.py). Measured with tracemalloc on demo records: 402 B (593 B before
# keys were shared).
RECORD_OVERHEAD = 400


class WindowStateTooLarge(Exception):
    """The shard's open windows outgrew windows.max_state_bytes (fatal: not retried)."""


_POSITION = attrgetter("record.position")
_DATA = attrgetter("record.data")


def _positions(items: Sequence[Any]) -> list[Position]:
    return list(map(_POSITION, items))


def _sizes(items: Sequence[Any]) -> list[int]:
    return list(map(len, map(_DATA, items)))


def final_in_order(results: Sequence[WindowResult]) -> list[WindowResult]:
    """One engine step's final results in the shard's window order (the S3 results objects;
    see layout.WindowOrder): a later step's finals all come after these."""
    return sorted((r for r in results if r.is_final), key=window_sort_key)


__all__ = ["ShardPipeline", "final_in_order", "window_spec"]
