"""Benchmark: our decode + window engine vs. a naive loop, a Polars per-batch ceiling, Bytewax.

Run: `aetherstream bench windows [--records N]`. Not a test: it prints figures from one run.

Workload (PEER-BENCH.md): 10 k devices x 4 metrics over 2 h of event time, each record 0-5 s
late relative to arrival order, values with 2 decimals; ISO-8601 and epoch-ms payloads.
Aggregation: count/sum/min/max per (device, metric, 60 s tumbling window).

Timed span per approach: from the list of record bytes (ours: RawRecords, as the KCL
adapter hands them over, through WindowEngine.process_records, the record processor's path,
which also builds the Events the archive needs) to a materialised result (ours: the list of
WindowResults; Polars:
the final DataFrame; naive/Bytewax: the dict/sink list). As in PEER-BENCH, every
measurement is a fresh process (forked, so it shares the generated input), and the time is
the median over --rounds processes. The input is gc.freeze()d in each: it is the harness's
list, not an approach's working set; and its pages are copied (the fork shares them
copy-on-write, and every approach's first touch of a record would otherwise pay a page
fault that no consumer reading records from KCL pays) before the timed span, for every
approach alike. Processes are pinned to one CPU and Polars to one
thread, so the figures are records/s per core. Generation, a 20 k warm-up and the agreement
check are outside the timed span. Every approach's result is checked against
the naive one (count, sum, min, max per group); Bytewax runs on a prefix (it is ~100x
slower), compared with the naive result on the same prefix.

Bytes per open group: a separate pass with tracemalloc, where no window closes (huge
out-of-orderness), divided by the engine's open groups. Measured after decode outputs are
dropped, so it is the engine's state (groups with their keys, bucket dicts).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from consumer.records.contract import Contract
from consumer.records.decode import decode_batch
from consumer.records.gcpause import paused_gc
from consumer.records.model import Position, RawRecord
from consumer.windows import WindowEngine, WindowResult, WindowSpec

SEED = 20261126
WINDOW_MS = 60_000
BASE_MS = int(datetime(2026, 11, 26, 8, 0, tzinfo=UTC).timestamp() * 1000)
SPAN_MS = 2 * 3600 * 1000
METRICS = ("battery", "temp", "humidity", "rssi")
TARGET_VS_POLARS = 0.7
TARGET_VS_BYTEWAX = 40.0
TARGET_BYTES_PER_GROUP = 450

Group = tuple[str, str, int]  # device, metric, window start
Agg = tuple[int, float, float, float]  # count, sum, min, max
Result = dict[Group, Agg]


def iso(ms: int) -> str:
    t = datetime.fromtimestamp(ms // 1000, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def generate(n: int, fmt: str, seed: int = SEED) -> tuple[list[bytes], list[int]]:
    """Deterministic payloads and their arrival times (ms)."""
    rng = random.Random(seed)
    payloads: list[bytes] = []
    arrivals: list[int] = []
    for i in range(n):
        arrival = BASE_MS + i * SPAN_MS // n
        ts = arrival - rng.randint(0, 5000)
        dev, metric = rng.randrange(10_000), METRICS[rng.randrange(4)]
        value = round(rng.uniform(0, 100), 2)
        t = f'"{iso(ts)}"' if fmt == "iso" else str(ts)
        payload = (
            f'{{"device_id": "dev-{dev:04d}", "metric": "{metric}", "value": {value}, "ts": {t}}}'
        )
        payloads.append(payload.encode())
        arrivals.append(arrival)
    return payloads, arrivals


def batches(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


# --- approaches -------------------------------------------------------------------------


def run_ours(
    records: list[RawRecord], batch: int, quantiles: bool = False
) -> tuple[list[WindowResult], dict[str, float]]:
    """engine.process_records per KCL-sized batch (decode + windows in one pass, also
    building the Events the archive needs), as the record processor does."""
    spec = WindowSpec(size_ms=WINDOW_MS, out_of_orderness_ms=5_000, quantiles=quantiles)
    engine = WindowEngine(spec, "shardId-000000000000")
    contract = Contract()
    results = []
    t_step = 0.0
    for chunk in batches(records, batch):
        t0 = time.perf_counter()
        _events, _rejected, out = engine.process_records(chunk, contract, chunk[-1].arrival_ms)
        results.extend(out.results)
        t_step += time.perf_counter() - t0
    t1 = time.perf_counter()
    results.extend(engine.close_all().results)
    return results, {"step_s": t_step, "close_s": time.perf_counter() - t1}


# The chain of issue 11's end-to-end test, as the record processor runs it (decode, the
# stage, the engine): a derived field, a filter on the metric, a site per device.
CHAIN_TABLES: list[dict[str, Any]] = [
    {"name": "pct", "kind": "derive", "field": "value_pct", "expr": "value / 100.0"},
    {"name": "no-rssi", "kind": "filter", "expr": "metric != 'rssi'"},
    {"name": "sites", "kind": "lookup", "source": "sites.csv", "key": "device_id"},
]
TARGET_CHAIN = 0.5
CHAIN_ROW = "transform chain (derive, filter, lookup)"


_TABLES: dict[str, Any] = {}


def _sites(src: Any) -> Any:
    """The lookup table, parsed once per process (the processor reads it at initialize,
    not per record; the warm-up run pays it)."""
    from consumer.transform.lookup import parse_csv

    if src.key not in _TABLES:
        rows = "".join(f"dev-{d:04d},site-{d % 17},{d % 5}\n" for d in range(10_000))
        _TABLES[src.key] = parse_csv(f"device_id,site,floor\n{rows}".encode(), src.key,
                                     "sites.csv")
    return _TABLES[src.key]


def run_chain(records: list[RawRecord], batch: int) -> tuple[list[WindowResult], dict[str, float]]:
    """decode_with_fields, TransformStage.apply and engine.process per batch: the
    pipeline's path when the settings declare [[transform]] tables."""
    from pathlib import Path

    from consumer.transform.config import parse_chain
    from consumer.transform.stage import TransformStage, decode_with_fields

    spec = WindowSpec(size_ms=WINDOW_MS, out_of_orderness_ms=5_000)
    engine = WindowEngine(spec, "shardId-000000000000")
    contract = Contract()
    stage = TransformStage(parse_chain(CHAIN_TABLES, "bench", Path("."), _sites).chain, contract)
    results = []
    for chunk in batches(records, batch):
        with paused_gc():  # as ShardPipeline._transformed
            staged = stage.apply(*decode_with_fields(chunk, contract))
            results.extend(engine.process(staged.events, chunk[-1].arrival_ms).results)
    results.extend(engine.close_all().results)
    return results, {}


TARGET_TWO = 0.6
TWO_ROW = "two aggregations (+ per device, 60 s)"


def run_two(records: list[RawRecord], batch: int) -> tuple[list[WindowResult], dict[str, float]]:
    """The pipeline's path with one declared aggregation beside the default engine (two
    aggregations over one stream; consumer/pipeline.py `_decoded_once`): decode_with_columns,
    the default engine over the decoder's columns, then the declared one over the fields it
    read (the record's JSON if it has none), all in one GC pause."""
    import orjson

    from consumer.transform.stage import decode_with_columns
    from consumer.windows.aggregations import Aggregation, AggregationSet

    spec = WindowSpec(size_ms=WINDOW_MS, out_of_orderness_ms=5_000)
    engine = WindowEngine(spec, "shardId-000000000000")
    declared = AggregationSet([Aggregation("per_device", (("device_id",),), ("value",), spec)],
                              "shardId-000000000000")
    contract = Contract()
    results: list[WindowResult] = []
    for chunk in batches(records, batch):
        now = chunk[-1].arrival_ms
        with paused_gc():
            events, _rejected, fields, columns = decode_with_columns(chunk, contract)
            out = engine.process_columns(*columns, events, now) if columns is not None else \
                engine.process(events, now)
            step = declared.process_columns(fields, events, now) if fields is not None else \
                declared.process([(orjson.loads(e.record.data), e) for e in events], now)
        results.extend(out.results)
        results.extend(r for o in step.outputs.values() for r in o.results)
    results.extend(engine.close_all().results)
    results.extend(r for o in declared.close_all().values() for r in o.results)
    return results, {}


def two_result(results: list[WindowResult]) -> Result:
    """Both aggregations' final results: the default's under its keys, the per-device
    one's under (device, "*", start)."""
    out: Result = {}
    for r in results:
        a = r.aggregates
        key = (r.key[0], r.key[1], r.start_ms) if len(r.key) > 1 else (r.key[0], "*", r.start_ms)
        out[key] = (a.count, a.sum, a.min, a.max)
    return out


def two_oracle(naive: Result) -> Result:
    """The naive groups, plus their per-device roll-up (count, sum, min, max combine)."""
    out = dict(naive)
    for (device, _metric, start), (n, total, lo, hi) in naive.items():
        k = (device, "*", start)
        if k in out:
            c, t, mn, mx = out[k]
            out[k] = (c + n, t + total, min(mn, lo), max(mx, hi))
        else:
            out[k] = (n, total, lo, hi)
    return out


def chain_oracle(naive: Result) -> Result:
    """What the chain leaves the windows: the naive result without the filtered metric."""
    return {k: v for k, v in naive.items() if k[1] != "rssi"}


def ours_result(results: list[WindowResult]) -> Result:
    out: Result = {}
    for r in results:
        a = r.aggregates
        out[(r.key[0], r.key[1], r.start_ms)] = (a.count, a.sum, a.min, a.max)
    return out


def run_naive(payloads: list[bytes]) -> Result:
    """json.loads per record and a dict of [count, sum, min, max] lists."""
    state: dict[Group, list[Any]] = {}
    for p in payloads:
        o = json.loads(p)
        ts = o["ts"]
        if isinstance(ts, str):
            ts = round(datetime.fromisoformat(ts).timestamp() * 1000)
        k = (o["device_id"], o["metric"], ts - ts % WINDOW_MS)
        v = o["value"]
        a = state.get(k)
        if a is None:
            state[k] = [1, v, v, v]
        else:
            a[0] += 1
            a[1] += v
            a[2] = min(a[2], v)
            a[3] = max(a[3], v)
    return {k: (a[0], a[1], a[2], a[3]) for k, a in state.items()}


def run_polars(payloads: list[bytes], batch: int, fmt: str) -> Any:
    """Polars per 10 k batch (partial aggregate) plus a final combine: a streaming ceiling."""
    import polars as pl

    ts_type = pl.Utf8 if fmt == "iso" else pl.Int64
    schema = {"device_id": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64, "ts": ts_type}
    partials = []
    for chunk in batches(payloads, batch):
        df = pl.read_ndjson(io.BytesIO(b"\n".join(chunk)), schema=schema)
        ts = pl.col("ts")
        if fmt == "iso":
            ts = ts.str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ", time_unit="ms").cast(pl.Int64)
        part = (
            df.with_columns(ws=ts - ts % WINDOW_MS)
            .group_by("device_id", "metric", "ws")
            .agg(
                c=pl.len(),
                s=pl.col("value").sum(),
                mn=pl.col("value").min(),
                mx=pl.col("value").max(),
            )
        )
        partials.append(part)
    final = (
        pl.concat(partials)
        .group_by("device_id", "metric", "ws")
        .agg(pl.col("c").sum(), pl.col("s").sum(), pl.col("mn").min(), pl.col("mx").max())
    )
    return final


def polars_result(final: Any) -> Result:
    return {(d, m, w): (c, s, mn, mx) for d, m, w, c, s, mn, mx in final.iter_rows()}


def bytewax_available() -> bool:
    try:
        import bytewax  # noqa: F401
    except ImportError:
        return False
    return True


def run_bytewax(payloads: list[bytes], batch: int) -> Result:
    """fold_window with an event clock (PEER-BENCH setup), single worker."""
    import bytewax.operators as op
    import orjson
    from bytewax.dataflow import Dataflow
    from bytewax.operators import windowing as win
    from bytewax.testing import TestingSink, TestingSource, run_main

    align = datetime.fromtimestamp(0, UTC)

    def parse(b: bytes) -> tuple[str, tuple[datetime, float]]:
        o = orjson.loads(b)
        ts = o["ts"]
        dt = (
            datetime.fromisoformat(ts)
            if isinstance(ts, str)
            else datetime.fromtimestamp(ts / 1000, UTC)
        )
        return f"{o['device_id']}|{o['metric']}", (dt, o["value"])

    def fold(acc: list[Any], item: tuple[datetime, float]) -> list[Any]:
        v = item[1]
        return [acc[0] + 1, acc[1] + v, min(acc[2], v), max(acc[3], v)]

    def combine(a: list[Any], b: list[Any]) -> list[Any]:
        return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])]

    out: list[Any] = []
    late: list[Any] = []
    flow = Dataflow("bench_windows")
    inp = op.input("in", flow, TestingSource(payloads, batch_size=batch))
    keyed = op.map("parse", inp, parse)
    clock: Any = win.EventClock(lambda v: v[0], wait_for_system_duration=timedelta(seconds=10))
    windower = win.TumblingWindower(length=timedelta(milliseconds=WINDOW_MS), align_to=align)
    wo = win.fold_window(
        "fold", keyed, clock, windower, lambda: [0, 0.0, math.inf, -math.inf], fold, combine,
        ordered=False,
    )  # fmt: skip
    op.output("out", wo.down, TestingSink(out))
    op.output("late", wo.late, TestingSink(late))
    run_main(flow)  # type: ignore[no-untyped-call]
    if late:
        raise RuntimeError(f"bytewax marked {len(late)} items late")
    result: Result = {}
    for key, (wid, acc) in out:
        dev, metric = key.split("|")
        result[(dev, metric, wid * WINDOW_MS)] = (acc[0], acc[1], acc[2], acc[3])
    return result


# --- measurement ------------------------------------------------------------------------


def agree(a: Result, b: Result) -> bool:
    """Same groups, counts, min, max; sums equal up to float summation order."""
    if a.keys() != b.keys():
        return False
    for k, (c, s, mn, mx) in a.items():
        c2, s2, mn2, mx2 = b[k]
        if (c, mn, mx) != (c2, mn2, mx2) or not math.isclose(s, s2, rel_tol=1e-9, abs_tol=1e-6):
            return False
    return True


# --- one fresh process per measurement ---------------------------------------------------

_INPUT: dict[tuple[int, str], tuple[list[bytes], list[RawRecord]]] = {}


def workload(n: int, fmt: str) -> tuple[list[bytes], list[RawRecord]]:
    """The payloads and the RawRecords the KCL adapter would build (cached per process)."""
    if (n, fmt) not in _INPUT:
        _INPUT.clear()
        payloads, arrivals = generate(n, fmt)
        records = [
            RawRecord(p, "pk", Position(i, 0), a)
            for i, (p, a) in enumerate(zip(payloads, arrivals, strict=True))
        ]
        _INPUT[(n, fmt)] = (payloads, records)
    return _INPUT[(n, fmt)]


def _approach(
    name: str, fmt: str, batch: int
) -> tuple[Callable[[list[bytes], list[RawRecord]], Any], Callable[[Any], Result]]:
    """(run over payloads/records, convert its output to a Result) for one approach."""
    if name == "naive":
        return (lambda p, r: run_naive(p)), (lambda out: out)
    if name in ("ours", "ours_q"):
        q = name == "ours_q"
        return (lambda p, r: run_ours(r, batch, q)), (lambda out: ours_result(out[0]))
    if name == "chain":
        return (lambda p, r: run_chain(r, batch)), (lambda out: ours_result(out[0]))
    if name == "two":
        return (lambda p, r: run_two(r, batch)), (lambda out: two_result(out[0]))
    if name == "polars":
        return (lambda p, r: run_polars(p, batch, fmt)), polars_result
    if name == "bytewax":
        return (lambda p, r: run_bytewax(p, batch)), (lambda out: out)
    raise ValueError(name)


def _child(conn: Any, name: str, n: int, fmt: str, batch: int, send_result: bool) -> None:
    """Runs in a fresh process: warm up on a prefix, then time one full run."""
    os.environ["POLARS_MAX_THREADS"] = "1"
    payloads, records = workload(n, fmt)
    run_fn, to_result = _approach(name, fmt, batch)
    warm = min(20_000, n)
    run_fn(payloads[:warm], records[:warm])
    # The input list is the harness's, not the approach's working set (a processor holds
    # one batch): freeze it so no approach's GC passes traverse a million input objects.
    gc.collect()
    gc.freeze()
    # Copy-on-write pages of the shared input: copy them now (a reference count write per
    # object), outside the timed span (see the module docstring).
    touched = [list(payloads), [r.data for r in records], [r.position for r in records]]
    del touched
    t0 = time.perf_counter()
    out = run_fn(payloads, records)
    elapsed = time.perf_counter() - t0
    extra: dict[str, Any] = dict(out[1]) if name.startswith(("ours", "chain")) else {}
    if name == "polars":
        import polars as pl

        extra["threads"] = pl.thread_pool_size()
    conn.send((elapsed, to_result(out) if send_result else None, extra))
    conn.close()


def measure(
    name: str, n: int, fmt: str, batch: int, rounds: int
) -> tuple[float, Result, dict[str, Any]]:
    """Median seconds over `rounds` fresh processes, the first run's result and extras."""
    # fork shares the generated input; once polars (threads) is loaded here, fork is unsafe.
    ctx: Any = mp.get_context("fork" if "polars" not in sys.modules else "spawn")
    if ctx.get_start_method() == "fork":
        workload(n, fmt)
    times: list[float] = []
    result: Result = {}
    extra: dict[str, Any] = {}
    for i in range(rounds):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_child, args=(send, name, n, fmt, batch, i == 0))
        proc.start()
        send.close()
        try:
            elapsed, res, ex = recv.recv()
        except EOFError:
            raise RuntimeError(f"{name} ({fmt}) child failed, exit code {proc.exitcode}") from None
        finally:
            proc.join()
        times.append(elapsed)
        if i == 0:
            result, extra = res, ex
    return statistics.median(times), result, extra


def bytes_per_group(records: list[RawRecord], batch: int, quantiles: bool) -> tuple[float, int]:
    """tracemalloc'd engine state / open groups, with nothing closing (see module doc)."""
    spec = WindowSpec(size_ms=WINDOW_MS, out_of_orderness_ms=10**13, quantiles=quantiles)
    contract = Contract()
    decode_batch(records[:10], contract)  # build the decode plan outside the measurement
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    engine = WindowEngine(spec, "s")
    for chunk in batches(records, batch):
        events, _, _ = engine.process_records(chunk, contract, 0)
        del events
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    groups = engine.open_windows
    return used / max(groups, 1), engine.state_bytes // max(groups, 1)


@dataclass
class Report:
    records: int
    rounds: int
    rows: list[tuple[str, str, int, float]] = field(default_factory=list)  # name, fmt, n, s
    agreement: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bytes_per_group: dict[str, float] = field(default_factory=dict)

    def rate(self, name: str, fmt: str) -> float | None:
        for n, f, recs, secs in self.rows:
            if (n, f) == (name, fmt):
                return recs / secs
        return None


def pin_one_cpu() -> tuple[str, set[int] | None]:
    """Pin to one CPU; returns a note and the previous affinity to restore."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)", None
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}", before


def run(n: int, batch: int, rounds: int, bytewax_n: int, formats: Sequence[str]) -> Report:
    note, before = pin_one_cpu()  # children inherit the affinity
    try:
        rep = Report(n, rounds)
        rep.notes.append(note + "; one fresh process per measurement")
        _run_all(rep, n, batch, rounds, bytewax_n, formats)
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)
    return rep


def _run_all(
    rep: Report, n: int, batch: int, rounds: int, bytewax_n: int, formats: Sequence[str]
) -> None:
    have_bw = bytewax_available()
    if not have_bw:
        rep.notes.append("bytewax: not installed")
    for fmt in formats:
        t, naive, _ = measure("naive", n, fmt, batch, rounds)
        rep.rows.append(("naive json.loads + dict", fmt, n, t))
        t, ours, split = measure("ours", n, fmt, batch, rounds)
        rep.rows.append(("ours: engine.process_records", fmt, n, t))
        rep.agreement[f"ours vs naive ({fmt})"] = agree(ours, naive)
        rep.notes.append(
            f"ours ({fmt}, first run): process_records {split['step_s']:.3f} s, "
            f"close_all {split['close_s']:.3f} s, {len(naive):,} groups"
        )
        if fmt == formats[0]:
            t, ours_q, _ = measure("ours_q", n, fmt, batch, rounds)
            rep.rows.append(("ours + quantile sketches", fmt, n, t))
            rep.agreement[f"ours+quantiles vs naive ({fmt})"] = agree(ours_q, naive)
            t, chained, _ = measure("chain", n, fmt, batch, rounds)
            rep.rows.append((CHAIN_ROW, fmt, n, t))
            rep.agreement[f"transform chain vs naive without rssi ({fmt})"] = agree(
                chained, chain_oracle(naive))
            t, two, _ = measure("two", n, fmt, batch, rounds)
            rep.rows.append((TWO_ROW, fmt, n, t))
            rep.agreement[f"two aggregations vs naive + its per-device roll-up ({fmt})"] = agree(
                two, two_oracle(naive))
        t, pol, ex = measure("polars", n, fmt, batch, rounds)
        rep.rows.append(("polars per-batch ceiling", fmt, n, t))
        rep.agreement[f"polars vs naive ({fmt})"] = agree(pol, naive)
        rep.notes.append(f"polars threads: {ex.get('threads')}")
        if have_bw:
            m = min(bytewax_n, n)
            t, bw, _ = measure("bytewax", m, fmt, batch, 1)
            rep.rows.append((f"bytewax fold_window ({m:,} prefix)", fmt, m, t))
            payloads, _ = workload(m, fmt)
            rep.agreement[f"bytewax vs naive, prefix ({fmt})"] = agree(bw, run_naive(payloads))
        if fmt == formats[0]:
            _, records = workload(n, fmt)
            prefix = records[: min(n, 200_000)]
            for q in (False, True):
                measured, estimate = bytes_per_group(prefix, batch, q)
                label = "with quantiles" if q else "no quantiles"
                rep.bytes_per_group[label] = measured
                rep.notes.append(f"state_bytes estimate {label}: {estimate} B/group")
        _INPUT.clear()


def print_report(rep: Report, formats: Sequence[str]) -> None:
    print(f"windows bench: {rep.records:,} records; " + "; ".join(rep.notes[:1]))
    print(f"times: median of {rep.rounds} runs, each a fresh process (bytewax: 1 run)")
    print(f"{'approach':44} {'fmt':4} {'records':>9} {'seconds':>8} {'records/s':>11}")
    for name, fmt, n, secs in rep.rows:
        print(f"{name:44} {fmt:4} {n:>9,} {secs:>8.3f} {n / secs:>11,.0f}")
    for note in rep.notes[1:]:
        print("note:", note)
    for fmt in formats:
        ours = rep.rate("ours: engine.process_records", fmt)
        pol = rep.rate("polars per-batch ceiling", fmt)
        bw = next((n / s for name, f, n, s in rep.rows if f == fmt and "bytewax" in name), None)
        assert ours is not None and pol is not None
        ok = "met" if ours / pol >= TARGET_VS_POLARS else "NOT met"
        print(f"[{fmt}] ours / polars = {ours / pol:.2f} (target >= {TARGET_VS_POLARS}: {ok})")
        if bw:
            ok = "met" if ours / bw >= TARGET_VS_BYTEWAX else "NOT met"
            print(f"[{fmt}] ours / bytewax = {ours / bw:.1f} (target >= {TARGET_VS_BYTEWAX}: {ok})")
        chained = rep.rate(CHAIN_ROW, fmt)
        if chained:
            ok = "met" if chained / ours >= TARGET_CHAIN else "NOT met"
            print(f"[{fmt}] transform chain / engine = {chained / ours:.2f} "
                  f"(target >= {TARGET_CHAIN}: {ok})")
        two = rep.rate(TWO_ROW, fmt)
        if two:
            ok = "met" if two / ours >= TARGET_TWO else "NOT met"
            print(f"[{fmt}] two aggregations / engine = {two / ours:.2f} "
                  f"(target >= {TARGET_TWO}: {ok})")
        q = rep.rate("ours + quantile sketches", fmt)
        if q:
            print(f"[{fmt}] quantiles cost: {q:,.0f} vs {ours:,.0f} records/s ({q / ours:.2f}x)")
    for label, b in rep.bytes_per_group.items():
        ok = "met" if b <= TARGET_BYTES_PER_GROUP else "NOT met"
        print(f"bytes per open group ({label}): {b:.0f} (target <= {TARGET_BYTES_PER_GROUP}: {ok})")
    for what, same in rep.agreement.items():
        print(f"agree {what}: {'yes' if same else 'NO'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aetherstream bench windows", description=__doc__)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=10_000, help="records per KCL batch")
    ap.add_argument("--rounds", type=int, default=3, help="median over this many runs")
    ap.add_argument("--bytewax-records", type=int, default=200_000, help="bytewax prefix")
    ap.add_argument("--formats", default="iso,ms", help="comma list of iso, ms")
    args = ap.parse_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if args.records <= 0 or not formats or any(f not in ("iso", "ms") for f in formats):
        ap.error("--records must be positive and --formats a list of iso, ms")
    rep = run(args.records, args.batch, args.rounds, args.bytewax_records, formats)
    print_report(rep, formats)
    return 0 if all(rep.agreement.values()) else 1
