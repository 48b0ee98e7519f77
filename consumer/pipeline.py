"""One shard's path: records -> decode -> buffers -> durable objects -> commit frontier.

This is the shell that wires the pure stages together for one shard. It knows nothing of
the KCL protocol (consumer/kcl/processor.py adapts that), so tests drive it with plain
RawRecords against a real S3 server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from consumer.commit.frontier import CommitFrontier
from consumer.config import Settings
from consumer.metrics import registry as m
from consumer.records.contract import Contract
from consumer.records.decode import decode_batch
from consumer.records.model import Event, Position, RawRecord, Rejected
from consumer.sinks.buffer import ByteBudget, FlushHints, SinkBuffer
from consumer.sinks.layout import (
    ObjectPlan,
    Provenance,
    archive_line,
    plan_objects,
    quarantine_line,
)
from consumer.sinks.s3 import S3ObjectWriter

log = logging.getLogger(__name__)
T = TypeVar("T")
Retrier = Callable[[str, Callable[[], T]], T]


def contract_from(settings: Settings) -> Contract:
    c = settings.contract
    return Contract(
        key_fields=c.key_fields,
        ts_field=c.ts_field,
        value_field=c.value_field,
        ts_format=c.ts_format,
    )


@dataclass(frozen=True)
class FlushReport:
    archived: int
    quarantined: int


class ShardPipeline:
    def __init__(
        self,
        settings: Settings,
        shard_id: str,
        writer: S3ObjectWriter,
        retry: Retrier[int],
        checkpointed: Position | None = None,
    ) -> None:
        self.shard_id = shard_id
        self._s3 = settings.s3
        self._prov = Provenance(settings.stream.name, shard_id)
        self._contract = contract_from(settings)
        self._writer = writer
        self._retry = retry
        f = settings.flush
        hints = FlushHints(
            max_records=f.max_records, max_bytes=f.max_bytes, max_age_ms=f.max_age_ms
        )
        budget = ByteBudget(4 * f.max_bytes)
        self._archive: SinkBuffer[Event] = SinkBuffer("archive", hints, budget)
        self._quarantine: SinkBuffer[Rejected] = SinkBuffer("quarantine", hints, budget)
        self.frontier = CommitFrontier(checkpointed)

    def ingest(self, records: Sequence[RawRecord], now_ms: int) -> None:
        """Decode a KCL batch and buffer every record: valid ones to the archive, the rest to
        quarantine. Nothing is dropped: each record lands in exactly one buffer."""
        events, rejected = decode_batch(records, self._contract)
        for e in events:
            self._archive.add(e, e.record.position, len(e.record.data), now_ms)
        for r in rejected:
            self._quarantine.add(r, r.record.position, len(r.record.data), now_ms)
        self.frontier.observe([r.position for r in records])

    def flush_due(self, now_ms: int) -> bool:
        return bool(self._archive.should_flush(now_ms) or self._quarantine.should_flush(now_ms))

    def flush(self, now_ms: int) -> FlushReport:
        """Make everything buffered durable (retrying until it is), in batches."""
        archived = quarantined = 0
        while (batch := self._archive.take_batch()) is not None:
            archived += self._write(batch.items, self._archive_plans, "archive")
            self._archive.mark_durable(batch)
        while (qbatch := self._quarantine.take_batch()) is not None:
            quarantined += self._write(
                qbatch.items, lambda items: self._quarantine_plans(items, now_ms), "quarantine"
            )
            self._quarantine.mark_durable(qbatch)
            for r in qbatch.items:
                m.RECORDS_QUARANTINED.labels(self.shard_id, r.reason).inc()
        m.RECORDS_ARCHIVED.labels(self.shard_id).inc(archived)
        return FlushReport(archived, quarantined)

    def checkpoint_position(self) -> Position | None:
        """The newest position every stage is done with, if it moved past the last one."""
        held = (self._archive.min_pending_position(), self._quarantine.min_pending_position())
        safe = self.frontier.safe_position(held)
        if safe is None or (
            self.frontier.checkpointed is not None and safe <= self.frontier.checkpointed
        ):
            return None
        return safe

    def buffered_bytes(self) -> int:
        return self._archive.pending_bytes + self._quarantine.pending_bytes

    def _write(
        self, items: Sequence[T], plan: Callable[[Sequence[T]], list[ObjectPlan]], sink: str
    ) -> int:
        written = 0
        with m.SINK_FLUSH_DURATION_SECONDS.labels(sink).time():
            for p in plan(items):
                written += self._retry(sink, functools.partial(self._writer.write, p))
        m.SINK_BATCHES.labels(sink, "ok").inc()
        m.SINK_RECORDS.labels(sink).inc(written)
        return written

    def _archive_plans(self, events: Sequence[Event]) -> list[ObjectPlan]:
        return plan_objects(
            events,
            lambda e: e.record.position,
            lambda e: e.ts_ms,
            lambda e: archive_line(self._prov, e),
            self._s3.archive_prefix,
            self.shard_id,
        )

    def _quarantine_plans(self, rejected: Sequence[Rejected], now_ms: int) -> list[ObjectPlan]:
        # Partitioned by arrival time: a rejected record may have no usable event time.
        return plan_objects(
            rejected,
            lambda r: r.record.position,
            lambda r: r.record.arrival_ms,
            lambda r: quarantine_line(self._prov, r, now_ms),
            self._s3.quarantine_prefix,
            self.shard_id,
        )
