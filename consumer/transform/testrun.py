"""`aetherstream transform test`: the configured chain and windows over a file, as the
service would run them, shown record by record.

`report` runs the service's own code over the input, in batches as KCL would deliver them:
decode_received -> TransformStage.apply -> WindowEngine.process (ShardPipeline._transformed),
then WindowEngine.close_all at the end of the input. It yields jq-friendly NDJSON objects,
each with a "type":
- per input record, in input order, with its provenance, "before" (the record as received)
  and "after" (the chain's output, null where the chain kept nothing):
  "record" (windowed: the key, ts_ms and value the windows read), "filtered" (the filter's
  name), "quarantined" (stage, reason, message) or "late" (the window stage's message);
- "result": one per aggregation, window and key, the last emission, in the S3 results
  lines' fields (consumer/sinks/rows.py), with "aggregation" (the declared aggregation's
  name, "" for the default one: the settings file's [[aggregation]] tables run beside it,
  fed the chain's output as the pipeline feeds them), "closed_by" ("watermark": final
  while the input ran, as the service stores it; "end_of_input": closed only because the
  input ended) and
  "emissions" (more than one with allowed lateness: the corrected re-emissions);
- "summary": the counts, which reconcile: input = windowed + filtered + quarantined + late
  (the default aggregation's), and per declared aggregation its results, its late records
  and the records it could not read or its filter refused ("aggregations").
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from consumer.records.contract import Contract
from consumer.records.model import Event, RawRecord, Rejected
from consumer.sinks.layout import window_sort_key
from consumer.sinks.rows import result_columns, result_lines_of
from consumer.transform.inputs import from_raw
from consumer.transform.model import TRecord
from consumer.transform.stage import StageOutput, TransformStage, decode_received
from consumer.windows.aggregations import AggregationSet
from consumer.windows.engine import WindowEngine
from consumer.windows.model import StepOutput, WindowResult

RECORD_TYPES = ("record", "filtered", "quarantined", "late")


@dataclass
class _Results:
    """Every emission of the run, by result id: the last one, how many, how it closed."""

    last: dict[str, WindowResult]
    emissions: Counter[str]
    by_watermark: set[str]

    def add(self, results: Sequence[WindowResult], at_end: bool) -> None:
        for r in results:
            rid = r.result_id
            self.last[rid] = r
            self.emissions[rid] += 1
            if r.is_final and not at_end:
                self.by_watermark.add(rid)

    def lines(self) -> list[dict[str, Any]]:
        # The default aggregation's first, then each declared one's, each in window order.
        ordered = sorted(self.last.values(), key=lambda r: (r.aggregation, window_sort_key(r)))
        rows = result_lines_of(result_columns(ordered))
        return [{"type": "result", "aggregation": r.aggregation, **orjson.loads(row),
                 "closed_by": "watermark" if r.result_id in self.by_watermark
                 else "end_of_input", "emissions": self.emissions[r.result_id]}
                for r, row in zip(ordered, rows, strict=True)]


def _base(kind: str, line: int, rec: RawRecord, decoded: TRecord | Rejected,
          after: Any) -> dict[str, Any]:
    before = decoded.fields if isinstance(decoded, TRecord) \
        else rec.data.decode("utf-8", "replace")
    return {"type": kind, "line": line, "position": str(rec.position),
            "partition_key": rec.partition_key, "before": before, "after": after}


def _reading(e: Event) -> dict[str, Any]:
    return {"key": list(e.key), "ts_ms": e.ts_ms, "value": e.value}


def _why(r: Rejected) -> dict[str, Any]:
    return {"stage": r.stage, "reason": r.reason, "message": r.message}


def _batch_lines(stage: TransformStage, part: Sequence[tuple[int, RawRecord]],
                 staged: StageOutput, out: StepOutput) -> Iterator[dict[str, Any]]:
    """One line per record of a batch, its outcome as the stage and the engine decided it;
    "after" is the chain over the record alone (display only: the chain is pure)."""
    windowed = {id(e.record): e for e in staged.events}
    refused = {id(r.record): r for r in staged.rejected}
    late = {id(r.record): r for r in out.late}
    chain = stage.chain
    for line, rec in part:
        decoded = from_raw(rec)
        alone = chain.apply([decoded]) if isinstance(decoded, TRecord) else None
        after = alone.records[0].fields if alone is not None and alone.records else None
        key = id(rec)
        if key in late:
            yield _base("late", line, rec, decoded, after) | _reading(windowed[key]) \
                | _why(late[key])
        elif key in windowed:
            yield _base("record", line, rec, decoded, after) | _reading(windowed[key])
        elif key in refused:
            yield _base("quarantined", line, rec, decoded, after) | _why(refused[key])
        else:  # the stage counts it under its filter: which one, from the run alone
            name = next(iter(alone.filtered), None) if alone is not None else None
            yield _base("filtered", line, rec, decoded, after) | {"filter": name}


def report(stage: TransformStage, contract: Contract, engine: WindowEngine | None,
           records: Sequence[tuple[int, RawRecord]], batch_size: int = 500,
           aggregations: AggregationSet | None = None) -> Iterator[dict[str, Any]]:
    """The lines described in the module docstring (engine None: windows disabled)."""
    counts: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    declared = _Declared(aggregations)
    results = _Results({}, Counter(), set())
    for start in range(0, len(records), batch_size):
        part = records[start:start + batch_size]
        staged = stage.apply(*decode_received([rec for _, rec in part], contract))
        # As the pipeline: a batch that leaves the windows nothing is not an idle tick.
        out = engine.process(staged.events, 0) if engine is not None and staged.events \
            else StepOutput([], [])
        results.add(out.results, at_end=False)
        results.add(declared.process(staged), at_end=False)
        filtered.update(staged.filtered)
        for line in _batch_lines(stage, part, staged, out):
            counts[line["type"]] += 1
            if line["type"] in ("quarantined", "late"):
                reasons[f"{line['stage']}/{line['reason']}"] += 1
            yield line
    if engine is not None:
        results.add(engine.close_all().results, at_end=True)
    results.add(declared.close_all(), at_end=True)
    lines = results.lines()
    yield from lines
    summary = _summary(len(records), counts, filtered, reasons,
                       [r for r in lines if not r["aggregation"]],
                       engine.watermark_ms if engine is not None else None)
    yield summary | declared.summary(lines) if aggregations is not None else summary


@dataclass
class _Declared:
    """The declared aggregations beside the default engine, as ShardPipeline runs them:
    each batch's kept records with the chain's output fields, no step on an empty one."""

    aggregations: AggregationSet | None
    late: Counter[str] = field(default_factory=Counter)
    not_read: Counter[str] = field(default_factory=Counter)

    def process(self, staged: StageOutput) -> list[WindowResult]:
        if self.aggregations is None or not staged.events:
            return []
        step = self.aggregations.process(list(zip(staged.fields, staged.events, strict=True)),
                                         0)
        self.not_read.update(step.skipped)
        for name, out in step.outputs.items():
            self.late[name] += len(out.late)
        return [r for out in step.outputs.values() for r in out.results]

    def close_all(self) -> list[WindowResult]:
        if self.aggregations is None:
            return []
        return [r for out in self.aggregations.close_all().values() for r in out.results]

    def summary(self, lines: Sequence[dict[str, Any]]) -> dict[str, Any]:
        assert self.aggregations is not None
        names = [a.name for a in self.aggregations.aggregations]
        return {"aggregations": {n: {
            "results": sum(1 for r in lines if r["aggregation"] == n),
            "late": self.late[n], "not_read": self.not_read[n],
            "watermark_ms": self.aggregations.engines[n].watermark_ms} for n in names}}


def _summary(n: int, counts: Counter[str], filtered: Counter[str], reasons: Counter[str],
             results: Sequence[dict[str, Any]], watermark_ms: int | None) -> dict[str, Any]:
    by_watermark = sum(1 for r in results if r["closed_by"] == "watermark")
    return {"type": "summary", "input": n, "windowed": counts["record"],
            "filtered": counts["filtered"], "filtered_by": dict(filtered),
            "quarantined": counts["quarantined"], "late": counts["late"],
            "by_reason": dict(reasons),
            "reconciles": n == sum(counts[t] for t in RECORD_TYPES),
            "results": len(results), "final_by_watermark": by_watermark,
            "closed_at_end_of_input": len(results) - by_watermark,
            "watermark_ms": watermark_ms}


def read_lines(path: Path) -> list[bytes]:
    """A file's lines; .gz (our raw archive's .ndjson.gz objects) is decompressed."""
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).splitlines()



def shard_order(records: Iterable[tuple[int, RawRecord]]) -> list[tuple[int, RawRecord]]:
    """The records in the order the shard delivered them: by position (raw archive lines
    carry theirs, so objects concatenated in any order come back in shard order; a plain
    file's records are at their line numbers, so keep the file's order)."""
    return sorted(records, key=lambda item: item[1].position)
