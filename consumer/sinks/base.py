"""What every sink takes and returns: typed input rows, per-item rejections, a small protocol.

The rows are our own values, not the windowing engine's or the decoder's classes, so the
sinks do not import those layers (consumer/sinks/rows.py adapts WindowResult / Event into
these, or straight into columns); their fields are the sources of consumer/sinks/schema.py.
Both row types carry their deterministic identity (schema.RAW_IDENTITY, RESULT_IDENTITY),
which is what makes a replay overwrite instead of duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class RawRow:
    """One delivered raw record. Identity: (stream, shard, sequence, sub_sequence)."""

    stream: str
    shard: str
    sequence: int  # Kinesis sequence numbers reach 56 digits: stored as text downstream
    sub_sequence: int
    partition_key: str
    arrival_ms: int
    event_ts_ms: int | None
    key: tuple[str | None, ...]  # one value per contract key field, in the contract's order
    value: float | None
    payload: str  # the record body as text (JSON for valid records)

    @property
    def doc_id(self) -> str:
        """A string identity for key/value stores (OpenSearch _id)."""
        return f"{self.stream}:{self.shard}:{self.sequence}:{self.sub_sequence}"


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One (possibly partial, per-shard) window result. Identity: result_id."""

    result_id: str
    kind: str
    start_ms: int
    end_ms: int
    key: tuple[str, ...]
    shard_id: str
    count: int
    sum: float
    min: float
    max: float
    mean: float
    first_ts_ms: int
    last_ts_ms: int
    is_final: bool
    quantiles: dict[str, float] = field(default_factory=dict)
    # Grows with every emission of a result id (more records, then final), so a sink keeps
    # the newest and a replay of an older emission never overwrites it.
    version: int = 0


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """An item a sink refused for a reason a retry cannot fix; the caller quarantines it."""

    item_id: str
    status: int
    reason: str  # the server's error type, e.g. "mapper_parsing_exception"
    message: str  # the server's reason text


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What a durable write did: how many items landed, and which were refused."""

    written: int
    rejected: tuple[RejectedItem, ...] = ()


RowT_contra = TypeVar("RowT_contra", contravariant=True)


class Sink(Protocol[RowT_contra]):
    """A commit step: when write_batch returns, every non-rejected row is durable.

    Implementations are idempotent by row identity (a replayed batch overwrites) and retry
    transient failures themselves; they raise only when told to stop (e.g. lease lost).
    """

    name: str

    def write_batch(self, rows: Sequence[RowT_contra], batch_key: str) -> WriteOutcome: ...
