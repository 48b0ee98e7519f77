"""Pure batching decisions for sink buffers: Firehose-style hints plus one shared byte budget.

No I/O and no clock reads: the caller passes `now_ms`. A buffer moves items through two
states, Flink-style:

    add() -> pending --take_batch()--> in flight --mark_durable()--> gone

`min_pending_position()` is the smallest record position still held in either state; the
commit frontier may not pass it. Bytes are charged to the shared `ByteBudget` on add and
released only when a batch is durable, because an in-flight batch still occupies memory.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from consumer.records.model import Position

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FlushHints:
    """Flush when any hint is reached (like Firehose's buffering hints)."""

    max_records: int = 500
    max_bytes: int = 5 * 1024 * 1024
    max_age_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.max_records < 1 or self.max_bytes < 1 or self.max_age_ms < 0:
            raise ValueError(f"invalid flush hints: {self}")


class FlushReason(StrEnum):
    RECORDS = "records"
    BYTES = "bytes"
    AGE = "age"
    BUDGET = "budget"


class ByteBudget:
    """One memory budget shared by every sink buffer in a process.

    Over budget, the caller must flush (and wait for durability) before adding more,
    instead of growing memory while a sink is slow or down.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError("limit_bytes must be >= 1")
        self.limit_bytes = limit_bytes
        self.used_bytes = 0

    def over_budget(self) -> bool:
        return self.used_bytes >= self.limit_bytes

    def admits(self, size_bytes: int) -> bool:
        """May an item of this size be added now? An empty budget admits anything, so one
        oversized item can never deadlock the pipeline."""
        return self.used_bytes == 0 or self.used_bytes + size_bytes <= self.limit_bytes

    def charge(self, size_bytes: int) -> None:
        self.used_bytes += size_bytes

    def release(self, size_bytes: int) -> None:
        if size_bytes > self.used_bytes:
            raise ValueError("released more bytes than were charged")
        self.used_bytes -= size_bytes


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    seq: int  # add order, unique within a buffer
    item: T
    position: Position
    size_bytes: int
    added_ms: int


@dataclass(frozen=True, slots=True)
class Batch(Generic[T]):
    """A contiguous run of added items, in add order, to be made durable as one unit."""

    batch_no: int
    items: tuple[T, ...]
    positions: tuple[Position, ...]
    size_bytes: int
    min_position: Position  # precomputed: the frontier asks for it on every KCL batch

    @property
    def first_position(self) -> Position:
        return self.positions[0]

    @property
    def last_position(self) -> Position:
        return self.positions[-1]


class SinkBuffer(Generic[T]):
    """The writer half of one sink: holds items until a batch is taken and made durable."""

    def __init__(self, name: str, hints: FlushHints, budget: ByteBudget) -> None:
        self.name = name
        self.hints = hints
        self.budget = budget
        self._pending: deque[_Entry[T]] = deque()
        self._pending_bytes = 0
        self._next_seq = 0
        self._next_batch = 0
        # Lazy-deletion min-heap over pending positions: (position, seq); seq < _taken_upto
        # means the entry already left in a batch.
        self._heap: list[tuple[Position, int]] = []
        self._taken_upto = 0
        self._in_flight: dict[int, Batch[T]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def add(self, item: T, position: Position, size_bytes: int, now_ms: int) -> None:
        """Buffer one item. Check `budget.admits(size)` first; add itself never refuses."""
        if size_bytes < 0:
            raise ValueError("size_bytes must be >= 0")
        entry = _Entry(self._next_seq, item, position, size_bytes, now_ms)
        self._next_seq += 1
        self._pending.append(entry)
        self._pending_bytes += size_bytes
        heapq.heappush(self._heap, (position, entry.seq))
        self.budget.charge(size_bytes)

    def should_flush(self, now_ms: int) -> FlushReason | None:
        """Why a batch should be taken now, or None to keep buffering."""
        if not self._pending:
            return None
        if len(self._pending) >= self.hints.max_records:
            return FlushReason.RECORDS
        if self._pending_bytes >= self.hints.max_bytes:
            return FlushReason.BYTES
        if now_ms - self._pending[0].added_ms >= self.hints.max_age_ms:
            return FlushReason.AGE
        if self.budget.over_budget():
            return FlushReason.BUDGET
        return None

    def take_batch(self) -> Batch[T] | None:
        """Move the oldest items (within max_records / max_bytes) into flight.

        A single item larger than max_bytes still forms a batch of one.
        """
        if not self._pending:
            return None
        taken: list[_Entry[T]] = []
        size = 0
        while self._pending and len(taken) < self.hints.max_records:
            nxt = self._pending[0]
            if taken and size + nxt.size_bytes > self.hints.max_bytes:
                break
            taken.append(self._pending.popleft())
            size += nxt.size_bytes
        self._pending_bytes -= size
        self._taken_upto = taken[-1].seq + 1
        batch = Batch(
            batch_no=self._next_batch,
            items=tuple(e.item for e in taken),
            positions=tuple(e.position for e in taken),
            size_bytes=size,
            min_position=min(e.position for e in taken),
        )
        self._next_batch += 1
        self._in_flight[batch.batch_no] = batch
        return batch

    def mark_durable(self, batch: Batch[T]) -> None:
        """The commit step finished: forget the batch and free its bytes."""
        if self._in_flight.pop(batch.batch_no, None) is None:
            raise KeyError(f"{self.name}: batch {batch.batch_no} is not in flight")
        self.budget.release(batch.size_bytes)

    def min_pending_position(self) -> Position | None:
        """Smallest position not yet durable in this sink (pending or in flight)."""
        while self._heap and self._heap[0][1] < self._taken_upto:
            heapq.heappop(self._heap)
        candidates = [b.min_position for b in self._in_flight.values()]
        if self._heap:
            candidates.append(self._heap[0][0])
        return min(candidates) if candidates else None
