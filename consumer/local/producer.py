"""`aetherstream produce`: a synthetic IoT producer (devices x metrics, jittered event time).

Generation is pure and seeded, so a test can rebuild exactly what was sent. Sending:
- plain records go out as they are;
- a fraction is KPL-aggregated with aws-kinesis-agg, one partition key per aggregate, because
  KCL silently drops a whole aggregate whose user records span more than one shard;
- poison records (a configurable ratio) exercise every quarantine reason.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aws_kinesis_agg.aggregator import RecordAggregator

from consumer.aws import put_records

METRICS = ("temperature", "humidity", "battery", "pressure")
KPL_MAGIC = b"\xf3\x89\x9a\xc2"
PUT_BATCH = 500  # PutRecords' limit


@dataclass(frozen=True)
class ProducerSpec:
    records: int = 10_000
    devices: int = 200
    jitter_ms: int = 3_000  # bounded out-of-orderness of event time
    interval_ms: int = 10  # event-time step between consecutive readings
    start_ms: int = 1_795_000_000_000  # 2026-11-18T11:06:40Z: fixed, so runs repeat
    poison_ratio: float = 0.0
    kpl_fraction: float = 0.0  # share of valid records sent inside KPL aggregates
    kpl_per_aggregate: int = 25
    # Like the KPL's RecordMaxBufferedTime: an aggregate only holds records produced close
    # together (100 readings = 1 s of event time), so aggregation adds little disorder.
    kpl_buffer_records: int = 100
    seed: int = 7


@dataclass(frozen=True)
class UserRecord:
    partition_key: str
    data: bytes
    poison: str | None  # the kind of poison, None for a valid reading
    aggregate: bool  # sent inside a KPL aggregate


def iso_ms(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{ms % 1000:03d}Z"
    )


def reading(rng: random.Random, i: int, spec: ProducerSpec) -> tuple[str, bytes]:
    device = f"dev-{rng.randrange(spec.devices):05d}"
    ts = spec.start_ms + i * spec.interval_ms - rng.randrange(spec.jitter_ms + 1)
    body: dict[str, Any] = {
        "device_id": device,
        "metric": METRICS[rng.randrange(len(METRICS))],
        "value": round(rng.uniform(-20, 120), 2),
        # Both accepted timestamp forms appear in the stream.
        "ts": iso_ms(ts) if i % 2 else ts,
        "seq": i,
    }
    return device, orjson.dumps(body)


POISON_KINDS = (
    "invalid_json",
    "invalid_utf8",
    "not_an_object",
    "missing_field",
    "non_finite",
    "bad_timestamp",
    "wrong_type",
    "too_deep",
    "binary_garbage",
    "kpl_checksum",
)


def poison(rng: random.Random, i: int) -> tuple[str, bytes, str]:
    kind = POISON_KINDS[i % len(POISON_KINDS)]
    base = {"device_id": f"dev-p{i}", "metric": "temperature", "value": 1.0, "ts": 1795000000000}
    data: bytes = {
        "invalid_json": b'{"device_id": "dev-x", "value": ',
        "invalid_utf8": b'{"device_id": "\xff\xfe", "metric": "m", "value": 1, "ts": 1}',
        "not_an_object": b"[1, 2, 3]",
        "missing_field": orjson.dumps({k: v for k, v in base.items() if k != "value"}),
        "non_finite": orjson.dumps(base)[:-1] + b',"value": NaN}',
        "bad_timestamp": orjson.dumps({**base, "ts": "yesterday at noon"}),
        "wrong_type": orjson.dumps({**base, "value": "hot"}),
        "too_deep": b"[" * 5000 + b"]" * 5000,
        "binary_garbage": bytes(rng.randrange(256) for _ in range(64)),
        "kpl_checksum": KPL_MAGIC + bytes(rng.randrange(256) for _ in range(40)),
    }[kind]
    return f"poison-{i}", data, kind


def generate(spec: ProducerSpec) -> Iterator[UserRecord]:
    """Exactly spec.records user records, deterministic for a given spec."""
    rng = random.Random(spec.seed)
    for i in range(spec.records):
        if spec.poison_ratio and rng.random() < spec.poison_ratio:
            pk, data, kind = poison(rng, i)
            yield UserRecord(pk, data, kind, aggregate=False)
        else:
            pk, data = reading(rng, i, spec)
            yield UserRecord(pk, data, None, aggregate=rng.random() < spec.kpl_fraction)


def to_kinesis_entries(records: Sequence[UserRecord], per_aggregate: int) -> list[dict[str, Any]]:
    """PutRecords entries: plain records as they are, the rest aggregated per partition key."""
    entries: list[dict[str, Any]] = []
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for r in records:
        if r.aggregate:
            grouped[r.partition_key].append(r.data)
        else:
            entries.append({"PartitionKey": r.partition_key, "Data": r.data})
    for pk, datas in grouped.items():
        for start in range(0, len(datas), per_aggregate):
            agg = RecordAggregator()
            for data in datas[start : start + per_aggregate]:
                full = agg.add_user_record(pk, data)
                if full is not None:  # only past 1 MiB; our chunks are far smaller
                    raise ValueError("aggregate overflowed; lower kpl_per_aggregate")
            record = agg.clear_and_get()
            agg_pk, ehk, blob = record.get_contents()
            entry = {"PartitionKey": agg_pk, "Data": blob}
            if ehk:
                entry["ExplicitHashKey"] = ehk
            entries.append(entry)
    return entries


@dataclass
class ProduceReport:
    user_records: int = 0
    kinesis_records: int = 0
    aggregated_user_records: int = 0
    poison: int = 0
    seconds: float = 0.0


def produce(
    kinesis: Any, stream: str, spec: ProducerSpec, rate: float = 0.0, progress: bool = True
) -> ProduceReport:
    """Send spec.records user records; rate is user records/s (0: as fast as possible)."""
    report = ProduceReport()
    started = time.monotonic()
    chunk: list[UserRecord] = []
    for record in generate(spec):
        chunk.append(record)
        if len(chunk) == PUT_BATCH * 4:
            _send(kinesis, stream, chunk, spec, report)
            chunk = []
            _pace(report, started, rate, progress, spec.records)
    if chunk:
        _send(kinesis, stream, chunk, spec, report)
    report.seconds = time.monotonic() - started
    _progress(report, spec.records, progress, done=True)
    return report


def _send(
    kinesis: Any, stream: str, chunk: list[UserRecord], spec: ProducerSpec, report: ProduceReport
) -> None:
    entries = []
    for first in range(0, len(chunk), spec.kpl_buffer_records):
        window = chunk[first : first + spec.kpl_buffer_records]
        entries += to_kinesis_entries(window, spec.kpl_per_aggregate)
    for start in range(0, len(entries), PUT_BATCH):
        put_records(kinesis, stream, entries[start : start + PUT_BATCH])
    report.user_records += len(chunk)
    report.kinesis_records += len(entries)
    report.aggregated_user_records += sum(r.aggregate for r in chunk)
    report.poison += sum(r.poison is not None for r in chunk)


def _pace(report: ProduceReport, started: float, rate: float, progress: bool, total: int) -> None:
    if rate > 0:
        ahead = report.user_records / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
    _progress(report, total, progress, done=False)


def _progress(report: ProduceReport, total: int, enabled: bool, done: bool) -> None:
    # Progress goes to stderr: stdout carries the final JSON for scripts.
    if not enabled:
        return
    width = 30
    filled = width * report.user_records // max(total, 1)
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {report.user_records}/{total} records"
    end = "\n" if done else ""
    if done or os.isatty(sys.stderr.fileno()):
        sys.stderr.write(line + end)
        sys.stderr.flush()
