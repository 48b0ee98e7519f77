"""The MultiLangDaemon's half of the KCL protocol, as bytes and decisions (pure).

The shapes are what KCL 2.5.8's MessageWriter writes with its plain Jackson ObjectMapper
(serialized from the jar's own message classes with jshell): keys in this order, compact,
records carrying "action": "record" (amazon_kclpy dispatches every JSON object on its
action), data in standard base64, and a checkpoint answer echoing the request's sequence and
sub-sequence numbers with the Java exception's simple name, or null, as "error".

The checkpoint rules are KCL's RecordProcessorCheckpointer's: no sequence number means the
largest record delivered so far; a position must lie between the last checkpoint and the
largest delivered record, otherwise the answer is an IllegalArgumentException.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from consumer.records.model import Position

SHARD_ID = "shardId-000000000000"
# Kinesis sequence numbers are 56-digit decimals that grow irregularly along a shard.
SEQUENCE_BASE = int("49657" + "0" * 51)
SEQUENCE_STEP = 8_589_934_609
ARRIVAL_LATENCY_MS = 250  # producer -> Kinesis, added to a record's nominal send time
REFUSED = "IllegalArgumentException"


@dataclass(frozen=True, slots=True)
class KclRecord:
    """One user record as the daemon hands it over (deaggregated if it came in a KPL one)."""

    data: bytes
    partition_key: str
    position: Position
    arrival_ms: int


def initialize_line(shard_id: str = SHARD_ID, sequence: str = "TRIM_HORIZON",
                    sub_sequence: int = 0) -> bytes:
    return orjson.dumps({"action": "initialize", "shardId": shard_id,
                         "sequenceNumber": sequence, "subSequenceNumber": sub_sequence})


def process_records_line(records: Sequence[KclRecord], millis_behind_latest: int) -> bytes:
    return orjson.dumps({
        "action": "processRecords",
        "records": [
            {
                "data": base64.b64encode(r.data).decode("ascii"),
                "partitionKey": r.partition_key,
                "sequenceNumber": str(r.position.sequence),
                "approximateArrivalTimestamp": r.arrival_ms,
                "subSequenceNumber": r.position.sub_sequence,
                "action": "record",
            }
            for r in records
        ],
        "millisBehindLatest": millis_behind_latest,
    })


def shutdown_requested_line() -> bytes:
    return orjson.dumps({"action": "shutdownRequested"})


def checkpoint_answer(sequence: Any, sub_sequence: Any, error: str | None) -> bytes:
    return orjson.dumps({"action": "checkpoint", "sequenceNumber": sequence,
                         "subSequenceNumber": sub_sequence, "error": error})


def parse_line(line: bytes) -> dict[str, Any] | None:
    """A processor's output line as a message, or None for what the daemon ignores: blank
    lines (amazon_kclpy wraps each message in newlines) and anything that is not JSON."""
    text = line.strip()
    if not text.startswith(b"{"):
        return None
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and "action" in message else None


def kinesis_records(payloads: Sequence[tuple[str, bytes, bool]], start_ms: int,
                    interval_ms: int, per_aggregate: int) -> list[KclRecord]:
    """(partition key, data, may aggregate) in send order -> records with positions.

    Records marked aggregatable go in runs of up to `per_aggregate` consecutive ones into one
    KPL aggregate: one Kinesis sequence number, sub-sequence numbers 0..n-1, one arrival
    time, each keeping its own partition key (one shard, so the KPL may mix keys). Others,
    and every record when per_aggregate <= 1, get a sequence number of their own.
    """
    out: list[KclRecord] = []
    kinesis_index = 0
    run = 0  # records in the aggregate being filled
    for i, (key, data, aggregatable) in enumerate(payloads):
        if not (per_aggregate > 1 and aggregatable and 0 < run < per_aggregate):
            kinesis_index += 1  # a new Kinesis record starts here
            run = 0
            arrival = start_ms + i * interval_ms + ARRIVAL_LATENCY_MS
        sequence = SEQUENCE_BASE + kinesis_index * SEQUENCE_STEP
        out.append(KclRecord(data, key, Position(sequence, run), arrival))
        run = run + 1 if per_aggregate > 1 and aggregatable else 0
    return out


def batches(records: Sequence[KclRecord], size: int) -> Iterator[Sequence[KclRecord]]:
    """Batches of up to `size` records that never split a KPL aggregate (KCL deaggregates
    within one GetRecords result); one aggregate larger than `size` is a batch of its own."""
    start = 0
    while start < len(records):
        end = min(start + size, len(records))
        while end < len(records) and records[end].position.sub_sequence > 0 and end > start:
            end -= 1  # back off to the start of the aggregate straddling the boundary
        if end == start:  # one aggregate longer than size: take all of it
            end = start + 1
            while end < len(records) and records[end].position.sub_sequence > 0:
                end += 1
        yield records[start:end]
        start = end


def millis_behind(batch: Sequence[KclRecord], newest_arrival_ms: int) -> int:
    """How far the batch's last record is behind the newest record on the shard."""
    return max(0, newest_arrival_ms - batch[-1].arrival_ms) if batch else 0


@dataclass
class CheckpointLedger:
    """The daemon's view of one shard's checkpoints while it feeds the processor."""

    delivered: Position | None = None  # the largest position handed over so far
    checkpointed: Position | None = None  # the last accepted checkpoint
    requests: int = 0
    refused: int = 0

    def deliver(self, last: Position) -> None:
        """A processRecords message whose last record is `last` is about to be sent."""
        self.delivered = last

    def answer(self, request: dict[str, Any]) -> tuple[bytes, bool]:
        """The answer line, and whether the checkpoint was taken."""
        self.requests += 1
        seq, sub = request.get("sequenceNumber"), request.get("subSequenceNumber")
        if seq is None and self.delivered is None:
            return checkpoint_answer(seq, sub, None), True  # at the start: nothing moves
        target = self.delivered if seq is None else _position(seq, sub)
        floor, ceiling = self.checkpointed, self.delivered
        if (target is None or ceiling is None or target > ceiling
                or (floor is not None and target < floor)):
            self.refused += 1
            return checkpoint_answer(seq, sub, REFUSED), False
        self.checkpointed = target
        return checkpoint_answer(seq, sub, None), True


def _position(seq: Any, sub: Any) -> Position | None:
    """A requested position; None for a sentinel or a malformed one."""
    if not str(seq).isdigit() or not (sub is None or isinstance(sub, int)):
        return None
    return Position(int(seq), sub or 0)
