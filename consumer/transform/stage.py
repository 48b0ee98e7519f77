"""The transform stage as the record processor runs it, between decode and windows.

`run_stage` (pure) takes what the decoder made of a batch (Events, and Rejected) and returns
what the windows see, what the archive keeps, and what goes to quarantine:
- The chain runs over every record that is a JSON object, in shard order: the Events, and
  the records the decoder refused only for the contract (a field missing or of the wrong
  type), since the chain may make them meet it (a rename, a derive). Records the decoder
  refused as bytes (not UTF-8, not JSON, too large, too deep...) go to quarantine as ever.
- The windows get an Event per record the chain kept, its key, event time and value read
  from the chain's OUTPUT by the contract's paths (the decoder's own rules and messages),
  and its record still the RAW record (late records, quarantine and replay keep what was
  received). An output that does not meet the contract is rejected: stage "transform",
  reason "contract:<class>"; a step's rejection is "<step>:<class>"; filtered records are
  counted by filter name.
- The archive (and Redshift raw rows) get every record that has a contract reading: its
  own, as received (the decoder's Event, exactly as without a chain), else the output's (a
  record that meets the contract only after the chain). The payload is always the raw
  record. A record with neither (filtered or refused, and not meeting the contract as
  received) is not archived: it is counted (filtered) or quarantined with its bytes.

When no step may write a contract path (Chain.may_write: no plug-in, and no step whose
written paths meet the key, time or value fields), the chain cannot change a contract
reading: the decoded Event is kept (no second decode), and a record the decoder refused
for the contract stays refused (no step could fix it).

`TransformStage` is the shell around it: the current chain, with lookup tables swapped in
between batches from a background thread (`LookupRefresh`), so processRecords never waits
for a table read. A swap is logged with the table's version and the first position it
applies to (replays: see the README's "Transforms in the service").
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from consumer.records.contract import Contract, split_path
from consumer.records.decode import Columns, decode_batch, decode_fields
from consumer.records.model import Event, RawRecord, Rejected
from consumer.transform.chain import Chain
from consumer.transform.columns import FieldBatch
from consumer.transform.config import CONTRACT
from consumer.transform.lookup import LookupTable
from consumer.transform.model import STAGE
from consumer.transform.model import rejected as rejected_by
from consumer.transform.tables import Refresher

log = logging.getLogger(__name__)
_RECORD = attrgetter("record")
_DATA = attrgetter("data")


@dataclass(frozen=True)
class StageOutput:
    events: list[Event]  # for the windows, shard order, each with its raw record
    archive: list[Event]  # for the archive and raw routes, shard order
    rejected: list[Rejected]  # the decoder's and the stage's, shard order
    filtered: Mapping[str, int] = field(default_factory=dict)  # by filter (step) name
    # The chain's output fields of each of `events` (declared aggregations group by them),
    # and the same by column when the chain ran by columns.
    fields: Sequence[Mapping[str, Any]] = field(default_factory=list)
    columns: FieldBatch | None = None


def decode_received(records: Sequence[RawRecord],
                    contract: Contract) -> tuple[list[Event], list[Rejected]]:
    """decode_batch's result; a clean batch by columns (decode_columns' guarantee), as
    WindowEngine.process_records decodes it."""
    events, rejected, _ = decode_with_fields(records, contract)
    return events, rejected


def decode_with_fields(records: Sequence[RawRecord], contract: Contract
                       ) -> tuple[list[Event], list[Rejected], FieldBatch | None]:
    """decode_received's result, and for a clean batch the records' JSON fields by column
    (decode_fields), so that the chain and the declared aggregations need not parse them
    again."""
    events, rejected, fields, _columns = decode_with_columns(records, contract)
    return events, rejected, fields


def decode_with_columns(records: Sequence[RawRecord], contract: Contract) -> tuple[
        list[Event], list[Rejected], FieldBatch | None, Columns | None]:
    """decode_with_fields, and for a clean batch also the Events' (keys, ts_ms, values)
    columns, which the default engine takes as they are (WindowEngine.process_columns)."""
    was_enabled = gc.isenabled()
    gc.disable()  # as decode_batch does: mid-batch collections dominate otherwise
    try:
        got = decode_fields(records, contract)
        if got is None:
            return *decode_batch(records, contract), None, None
        columns, fields = got
        events = list(map(Event, *columns, records))
    finally:
        if was_enabled:
            gc.enable()
    return events, [], FieldBatch(fields, len(records)), columns


def contract_paths(contract: Contract) -> tuple[tuple[str, ...], ...]:
    return tuple(split_path(p) for p in contract.all_paths)


def run_stage(chain: Chain, events: Sequence[Event], rejected: Sequence[Rejected],
              contract: Contract, keep_decoded: bool,
              fields: FieldBatch | None = None) -> StageOutput:
    """The chain over a decoded batch (see the module docstring). keep_decoded:
    `not chain.may_write(contract_paths(contract))`, which the caller computes once.
    fields: the events' JSON fields by column, if the decoder has them (decode_with_fields;
    then it rejected none). Cyclic GC is off meanwhile, as in decode_batch: a chain
    allocates a dict per record and step, and collections triggered mid-batch would cost
    more than the steps."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if keep_decoded:
            return _keeping_decoded(chain, events, rejected, fields)
        return _reading_output(chain, events, rejected, contract)
    finally:
        if was_enabled:
            gc.enable()


def _keeping_decoded(chain: Chain, events: Sequence[Event], rejected: Sequence[Rejected],
                     fields: FieldBatch | None) -> StageOutput:
    if fields is not None:
        passed = chain.run_columns(fields)
    else:  # the decoder accepted each of these bytes as one JSON object: loads cannot fail
        passed = chain.run(list(map(orjson.loads, map(_DATA, map(_RECORD, events)))))
    refused = [rejected_by(step, events[i].record, why) for i, step, why in passed.refused]
    return StageOutput(list(map(events.__getitem__, passed.index)), list(events),
                       _merged(rejected, refused), passed.filtered, passed.fields,
                       passed.columns)


def _reading_output(chain: Chain, events: Sequence[Event], rejected: Sequence[Rejected],
                    contract: Contract) -> StageOutput:
    inputs: list[tuple[RawRecord, Event | None, Any]] = [
        (e.record, e, orjson.loads(e.record.data)) for e in events]
    kept_rejects: list[Rejected] = []
    for r in rejected:
        fields = _object(r.record.data) if r.stage == "contract" else None
        if fields is None:
            kept_rejects.append(r)
        else:
            inputs.append((r.record, None, fields))
    if len(inputs) > len(events):  # refused ones joined: back to shard order
        inputs.sort(key=lambda item: item[0].position)
    passed = chain.run([fields for _, _, fields in inputs])
    refused = [rejected_by(step, inputs[i][0], why) for i, step, why in passed.refused]
    windows, broken = _decode_output([inputs[i][0] for i in passed.index], passed.fields,
                                     contract)
    read = {id(e.record): e for e in windows}
    archive = [e for e in (raw or read.get(id(rec)) for rec, raw, _ in inputs) if e is not None]
    out_of = {id(inputs[i][0]): f for i, f in zip(passed.index, passed.fields, strict=True)}
    return StageOutput(windows, archive, _merged(kept_rejects, refused, broken),
                       passed.filtered, [out_of[id(e.record)] for e in windows])


def _object(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:  # e.g. a lone surrogate the stdlib parser let through
        return None
    return value if isinstance(value, dict) else None


def _merged(*parts: Sequence[Rejected]) -> list[Rejected]:
    return sorted((r for p in parts for r in p), key=lambda r: r.record.position)


def _decode_output(records: Sequence[RawRecord], outputs: Sequence[Mapping[str, Any]],
                   contract: Contract) -> tuple[list[Event], list[Rejected]]:
    """The chain's output read by the contract, with the decoder's own rules and messages
    (the fields are encoded and decoded again), each Event holding its raw record."""
    raw_of: dict[int, RawRecord] = {}
    encoded: list[RawRecord] = []
    refused: list[Rejected] = []
    for rec, fields in zip(records, outputs, strict=True):
        try:
            data = orjson.dumps(fields)
        except TypeError as exc:  # a plug-in's value JSON cannot hold
            refused.append(Rejected(rec, STAGE, f"{CONTRACT}:not_json",
                                    f"the transform chain's output is not JSON: {exc}"))
            continue
        out = RawRecord(data, rec.partition_key, rec.position, rec.arrival_ms)
        raw_of[id(out)] = rec
        encoded.append(out)
    events, rejected = decode_batch(encoded, contract)
    refused += [Rejected(raw_of[id(r.record)], STAGE, f"{CONTRACT}:{r.reason}",
                         f"after the transform chain: {r.message}") for r in rejected]
    return [Event(e.key, e.ts_ms, e.value, raw_of[id(e.record)]) for e in events], refused


class LookupRefresh:
    """A daemon thread that runs the Refresher on its intervals and holds what changed
    until the pipeline takes it between two batches."""

    def __init__(self, refresher: Refresher, clock: Callable[[], float] = time.time) -> None:
        intervals = [s.refresh_s for s in refresher.sources.values() if s.refresh_s > 0]
        self._wake_s = min([1.0, *intervals])
        self._refresher, self._clock = refresher, clock
        self._pending: dict[str, LookupTable] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lookup-refresh", daemon=True)

    def start(self) -> LookupRefresh:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(self._wake_s):
            try:
                changed = self._refresher.refresh(self._clock())
            except Exception:  # a bug here must not end refreshing; the tables stay
                log.exception("lookup refresh failed; keeping the loaded tables")
                continue
            if changed:
                with self._lock:
                    self._pending.update(changed)

    def take(self) -> dict[str, LookupTable]:
        if not self._pending:  # the common case, without the lock
            return {}
        with self._lock:
            out, self._pending = self._pending, {}
        return out


class TransformStage:
    """The chain the pipeline runs, with refreshed lookup tables swapped in."""

    def __init__(self, chain: Chain, contract: Contract,
                 refresh: LookupRefresh | None = None) -> None:
        self._contract = contract
        self._paths = contract_paths(contract)
        self._refresh = refresh
        self._set(chain)

    def _set(self, chain: Chain) -> None:
        self.chain = chain
        self.keeps_decoded = not chain.may_write(self._paths)

    def apply(self, events: Sequence[Event], rejected: Sequence[Rejected] = (),
              fields: FieldBatch | None = None) -> StageOutput:
        changed = self._refresh.take() if self._refresh is not None else {}
        if changed:
            self._set(self.chain.with_tables(changed))
            at = str(events[0].record.position) if events else "the next record"
            for step, table in changed.items():
                log.info("lookup table refreshed", extra={
                    "step": step, "version": table.version, "rows": len(table.rows),
                    "from_position": at})
        return run_stage(self.chain, events, rejected, self._contract, self.keeps_decoded,
                         fields)

    def close(self) -> None:
        if self._refresh is not None:
            self._refresh.stop()


def open_stage(chain: Chain, contract: Contract, refresher: Refresher | None) -> TransformStage:
    """The stage, with its refresh thread started when a lookup has an interval."""
    refresh = None
    if refresher is not None and any(s.refresh_s > 0 for s in refresher.sources.values()):
        refresh = LookupRefresh(refresher).start()
    return TransformStage(chain, contract, refresh)
