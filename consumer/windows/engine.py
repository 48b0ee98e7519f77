"""The per-shard event-time window engine: watermark, lateness, emission, snapshot/restore.

Pure: values in, values out; time comes in as `now_ms` arguments.

Watermark
  W = max(largest event time seen - out_of_orderness_ms, idle advance, start watermark),
  never decreasing. W means "records with event time < W are not expected any more".
  It is advanced per record (a record is judged against W before its own time counts),
  so which records are late depends only on the record sequence and the ticks, not on
  how KCL happened to cut the batches.
  Idle advance: process() with no events, or tick(now), when idle_timeout_ms is set and
  no event came for idle = now - (processing time of the last non-empty batch) >=
  idle_timeout_ms: W >= max_event_time - out_of_orderness + (idle - idle_timeout_ms),
  i.e. event time is assumed to move on with processing time once the shard is idle.

Windows are half-open [start, end). Tumbling/sliding windows align to the UTC epoch.
Let L = allowed_lateness_ms.

Emission (results are produced at the end of process/tick/close_all calls)
  tumbling/sliding: a (window, key) result is emitted when W >= end, with is_final =
    (end + L <= W). While end <= W < end + L, records that arrive late still update
    the window, and the corrected result is emitted again (same result_id, is_final=False)
    at the end of that step. When W >= end + L the window is emitted one last time with
    is_final=True and its state is freed. With L = 0 each result is emitted once, final.
  session: emitted once, is_final=True, when end + L <= W (see kinds.Sessions for why).
  close_all (shard end): every open window is emitted with is_final=True, whatever W.
  is_final=True therefore means: this engine will never emit this result_id again.

Late records (side output, StepOutput.late, stage="window", reason="late")
  tumbling/sliding: a record whose windows all have end + L <= W; a sliding record that
    still fits some of its windows goes into those and is not reported.
  session: a record with event time < W - L, judged by its own time, not its window's
    end, so an emitted (final) session is never changed (see kinds.Sessions for why).

Entry points: process(events, now_ms) takes decoded Events; process_records(records,
contract, now_ms) takes a KCL batch of RawRecords and returns exactly what
decode_batch(records, contract) followed by process(events, now_ms) would (events,
rejections, StepOutput), faster: the record processor's path.

Replay after a failover
  The record processor checkpoints only when every sink has drained, and the snapshot for
  that position is durable first. A new owner restore()s it and replays from after the
  checkpoint: the snapshot carries the last processed position, and process() silently
  drops replayed events at or before it (counted in replayed_skipped), so nothing is
  counted twice. restore() restarts the idle clock: the time the shard had no owner is
  not idleness of the stream, and counting it would judge the backlog late.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import asdict
from operator import attrgetter
from typing import Any

import msgspec

from consumer.records.contract import Contract
from consumer.records.decode import decode_batch, decode_columns
from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.windows.kinds import NEG_INF, Aligned, Key, Late, Sessions, load_pos, snap_pos
from consumer.windows.model import StepOutput, WindowResult, WindowSpec

SNAPSHOT_VERSION = 1
_RECORD = attrgetter("record")


class WindowEngine:
    """Windows for one shard. See the module docstring for the exact semantics."""

    def __init__(self, spec: WindowSpec, shard_id: str, aggregation: str = "") -> None:
        """aggregation: the name its results carry (a declared aggregation's; not part of
        the snapshot, which restore() is given again)."""
        self.spec = spec
        self.shard_id = shard_id
        self._windows: Aligned | Sessions = (
            Sessions(spec, shard_id) if spec.kind == "session" else Aligned(spec, shard_id)
        )
        self._windows.aggregation = aggregation
        self._max_ts = NEG_INF
        self._wm = NEG_INF
        self._last_event_now: int | None = None
        self._last_pos: Position | None = None  # last position processed
        self._dedupe_until: Position | None = None  # from a snapshot: already counted
        self._closed = False
        self.late_count = 0
        self.replayed_skipped = 0

    # --- stepping ---------------------------------------------------------------------

    def process(self, events: Sequence[Event], now_ms: int) -> StepOutput:
        """Add a batch (in shard order) and emit what the watermark now allows."""
        if self._closed:
            raise ValueError(f"shard {self.shard_id}: process() after close_all()")
        was_enabled = gc.isenabled()
        gc.disable()  # the batch allocates many state lists; mid-batch collections dominate
        try:
            late: Late = []
            events = self._drop_already_counted(events)
            if events:
                self._last_event_now = now_ms
                self._last_pos = events[-1].record.position
                self._max_ts, self._wm, late = self._windows.add(events, self._max_ts, self._wm)
            else:
                self._idle_advance(now_ms)
            results = self._windows.collect(self._wm, False)
            return StepOutput(results, self._report_late(late))
        finally:
            if was_enabled:
                gc.enable()

    def process_records(
        self, records: Sequence[RawRecord], contract: Contract, now_ms: int
    ) -> tuple[list[Event], list[Rejected], StepOutput]:
        """Decode a KCL batch and process it: the same (events, rejected, output) as

            events, rejected = decode_batch(records, contract)
            output = self.process(events, now_ms)

        in one pass. For tumbling windows without quantiles, a batch's clean records are
        decoded into columns and windowed without per-record objects on the way (Events are
        still built, for the archive), its poison rejected as decode_batch rejects it; a
        batch decode_columns declines, and other window kinds, take the two calls above.
        """
        if not self._columnar():
            events, rejected = decode_batch(records, contract)
            return events, rejected, self.process(events, now_ms)
        was_enabled = gc.isenabled()
        gc.disable()  # as in process(): mid-batch collections dominate otherwise
        try:
            cols = decode_columns(records, contract)
            if cols is None:
                events, rejected = decode_batch(records, contract)
                return events, rejected, self.process(events, now_ms)
            keys, ts, values, clean, rejected = cols
            events = list(map(Event, keys, ts, values, clean))
            return events, rejected, self._add_columns(keys, ts, values, events, now_ms)
        finally:
            if was_enabled:
                gc.enable()

    def process_columns(self, keys: list[Key], ts: list[int], values: list[float],
                        events: Sequence[Event], now_ms: int) -> StepOutput:
        """process() of the Events (keys[i], ts[i], values[i], events[i].record) of a
        non-empty batch, without building them where the windows take columns. events[i]
        is only read for its record and event time, which must be ts[i] (a late record's
        Rejected): a declared aggregation passes the contract's Events."""
        if not self._columnar():
            return self.process(list(map(Event, keys, ts, values, map(_RECORD, events))),
                                now_ms)
        was_enabled = gc.isenabled()
        gc.disable()  # as in process()
        try:
            return self._add_columns(keys, ts, values, events, now_ms)
        finally:
            if was_enabled:
                gc.enable()

    def _columnar(self) -> bool:
        windows = self._windows
        return not self._closed and self._dedupe_until is None and \
            isinstance(windows, Aligned) and windows.columnar

    def _add_columns(self, keys: list[Key], ts: list[int], values: list[float],
                     events: Sequence[Event], now_ms: int) -> StepOutput:
        windows = self._windows
        assert isinstance(windows, Aligned)
        self._last_event_now = now_ms
        self._last_pos = events[-1].record.position
        self._max_ts, self._wm, late = windows.add_columns(
            keys, ts, values, events, self._max_ts, self._wm
        )
        results = windows.collect(self._wm, False)
        return StepOutput(results, self._report_late(late))

    def tick(self, now_ms: int) -> StepOutput:
        """Processing-time step for an idle shard (KCL delivered an empty batch)."""
        return self.process((), now_ms)

    def close_all(self) -> StepOutput:
        """Shard end: emit every open window as final and free all state."""
        results: list[WindowResult] = self._windows.collect(self._wm, True)
        self._closed = True
        return StepOutput(results, [])

    def _idle_advance(self, now_ms: int) -> None:
        timeout = self.spec.idle_timeout_ms
        if timeout is None or self._last_event_now is None or self._max_ts == NEG_INF:
            return
        idle = now_ms - self._last_event_now
        if idle >= timeout:
            self._wm = max(self._wm, self._max_ts - self.spec.out_of_orderness_ms + idle - timeout)

    def _drop_already_counted(self, events: Sequence[Event]) -> Sequence[Event]:
        until = self._dedupe_until
        if until is None or not events:
            return events
        if events[0].record.position > until:
            self._dedupe_until = None  # positions only grow: the replayed part is over
            return events
        kept = [e for e in events if e.record.position > until]
        self.replayed_skipped += len(events) - len(kept)
        return kept

    def _report_late(self, late: Late) -> list[Rejected]:
        out: list[Rejected] = []
        lateness = self.spec.allowed_lateness_ms
        for ev, wm in late:
            msg = (
                f"event time {ev.ts_ms} ms is too late for the {self.spec.kind} windows: "
                f"watermark {wm} ms, allowed lateness {lateness} ms"
            )
            out.append(Rejected(ev.record, "window", "late", msg))
        self.late_count += len(out)
        return out

    # --- introspection ----------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        return None if self._wm == NEG_INF else self._wm

    @property
    def open_windows(self) -> int:
        """Open (window, key) groups."""
        return self._windows.open_groups

    @property
    def state_bytes(self) -> int:
        """Estimate of the memory held by open state (calibrated by the windows bench)."""
        return self._windows.state_bytes()

    # --- snapshot ---------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """All state as bytes (msgpack). Restoring it and replaying from any earlier
        position yields the same results as if nothing had happened."""
        state = {
            "version": SNAPSHOT_VERSION,
            "spec": asdict(self.spec),
            "shard_id": self.shard_id,
            "max_ts": self._max_ts,
            "wm": self._wm,
            "last_event_now": self._last_event_now,
            "last_pos": None if self._last_pos is None else snap_pos(self._last_pos),
            "closed": self._closed,
            "late_count": self.late_count,
            "windows": self._windows.to_state(),
        }
        return msgspec.msgpack.encode(state)

    @classmethod
    def restore(cls, data: bytes, now_ms: int | None = None,
                aggregation: str = "") -> WindowEngine:
        """The engine of a snapshot. With now_ms (a new owner resuming), the idle clock
        restarts at now_ms instead of counting the time without an owner as idleness."""
        s: dict[str, Any] = msgspec.msgpack.decode(data)
        if s.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"snapshot version {s.get('version')!r} is not {SNAPSHOT_VERSION}")
        eng = cls(WindowSpec(**s["spec"]), s["shard_id"], aggregation)
        eng._max_ts, eng._wm, eng._last_event_now = s["max_ts"], s["wm"], s["last_event_now"]
        if now_ms is not None and eng._last_event_now is not None:
            eng._last_event_now = now_ms
        if s["last_pos"] is not None:
            eng._last_pos = eng._dedupe_until = load_pos(s["last_pos"])
        eng._closed, eng.late_count = s["closed"], s["late_count"]
        eng._windows.load_state(s["windows"])
        return eng
