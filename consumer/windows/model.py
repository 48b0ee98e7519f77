"""Window configuration and the values the engine emits: WindowSpec, Aggregates, WindowResult.

Every aggregate is mergeable: two partial results of the same window and key (for example
from a parent shard and its child after a reshard) combine with `merge` into the result a
single shard would have produced (up to float rounding of the sum).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import msgspec

from consumer.records.model import Rejected
from consumer.windows.sketch import DEFAULT_ACCURACY, QuantileSketch, merge_sketch_bytes

WindowKind = Literal["tumbling", "sliding", "session"]
KINDS: tuple[str, ...] = ("tumbling", "sliding", "session")


def _non_negative_int(name: str, v: object, *, positive: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < (1 if positive else 0):
        want = "a positive" if positive else "a non-negative"
        raise ValueError(f"{name}: must be {want} int (ms), got {v!r}")


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """What windows to build and when to close them.

    kind: tumbling(size_ms), sliding(size_ms, slide_ms; size a multiple of slide) or
      session(gap_ms). Tumbling and sliding windows are aligned to the UTC epoch.
    out_of_orderness_ms: watermark = largest event time seen minus this.
    allowed_lateness_ms: how far behind the watermark a window still accepts records.
    idle_timeout_ms: if set, after this much processing time without events the watermark
      moves forward with processing time (see WindowEngine.tick). None: never.
    quantiles: keep a DDSketch (relative accuracy quantile_accuracy) per window and key.
    """

    kind: WindowKind = "tumbling"
    size_ms: int = 60_000
    slide_ms: int | None = None
    gap_ms: int | None = None
    allowed_lateness_ms: int = 0
    out_of_orderness_ms: int = 5_000
    idle_timeout_ms: int | None = None
    quantiles: bool = False
    quantile_accuracy: float = DEFAULT_ACCURACY

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "session":
            _non_negative_int("gap_ms", self.gap_ms, positive=True)
        else:
            _non_negative_int("size_ms", self.size_ms, positive=True)
        if self.kind == "sliding":
            _non_negative_int("slide_ms", self.slide_ms, positive=True)
            assert self.slide_ms is not None
            if self.slide_ms > self.size_ms or self.size_ms % self.slide_ms:
                msg = f"slide_ms: {self.slide_ms} must divide size_ms {self.size_ms}"
                raise ValueError(msg)
        _non_negative_int("allowed_lateness_ms", self.allowed_lateness_ms)
        _non_negative_int("out_of_orderness_ms", self.out_of_orderness_ms)
        if self.idle_timeout_ms is not None:
            _non_negative_int("idle_timeout_ms", self.idle_timeout_ms, positive=True)
        if not isinstance(self.quantiles, bool):
            raise ValueError(f"quantiles: must be a bool, got {self.quantiles!r}")
        qa = self.quantile_accuracy
        if isinstance(qa, bool) or not isinstance(qa, int | float) or not 0.0 < qa < 1.0:
            raise ValueError(f"quantile_accuracy: must be in (0, 1), got {qa!r}")


class Aggregates(msgspec.Struct, frozen=True, gc=False):
    """count, sum, min, max, first/last event time, and an optional serialised DDSketch."""

    count: int
    sum: float
    min: float
    max: float
    first_ts_ms: int
    last_ts_ms: int
    sketch: bytes | None = None

    @property
    def mean(self) -> float:
        return self.sum / self.count

    def quantile(self, q: float) -> float | None:
        """Value at quantile q from the sketch (relative error <= the sketch accuracy)."""
        if self.sketch is None:
            return None
        return QuantileSketch.from_bytes(self.sketch).quantile(q)

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
        """E.g. {"p50": ..., "p90": ..., "p99": ...}; all None without a sketch."""
        sk = QuantileSketch.from_bytes(self.sketch) if self.sketch is not None else None
        return {f"p{q * 100:g}": (sk.quantile(q) if sk else None) for q in qs}


def merge_aggregates(a: Aggregates, b: Aggregates) -> Aggregates:
    return Aggregates(
        a.count + b.count,
        a.sum + b.sum,
        min(a.min, b.min),
        max(a.max, b.max),
        min(a.first_ts_ms, b.first_ts_ms),
        max(a.last_ts_ms, b.last_ts_ms),
        merge_sketch_bytes(a.sketch, b.sketch),
    )


def result_id(kind: str, start_ms: int, end_ms: int, key: tuple[str, ...], shard_id: str,
              aggregation: str = "") -> str:
    """Deterministic 128-bit hex id of (aggregation, kind, start, end, key, shard); msgpack
    keeps it unambiguous whatever characters the key holds. The default aggregation ("")
    keeps the id it had before there were several."""
    ident = (kind, start_ms, end_ms, key, shard_id)
    blob = msgspec.msgpack.encode((aggregation, *ident) if aggregation else ident)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


class WindowResult(msgspec.Struct, frozen=True, gc=False):
    """One window's aggregate for one key from one shard (or several, after merge).

    is_final: no later emission for this result_id will follow from this engine (see
    consumer.windows.engine for exactly when results are emitted).
    aggregation: the declared aggregation's name; "" for the default one (consumer/windows/
    aggregations.py).
    """

    kind: str
    start_ms: int
    end_ms: int
    key: tuple[str, ...]
    shard_id: str
    aggregates: Aggregates
    is_final: bool
    aggregation: str = ""

    @property
    def result_id(self) -> str:
        # Computed on access: the engine emits ~1 result per record on sparse streams.
        return result_id(self.kind, self.start_ms, self.end_ms, self.key, self.shard_id,
                         self.aggregation)


def merge(a: WindowResult, b: WindowResult) -> WindowResult:
    """Combine partial results of the same window and key from different shards.

    The merged shard_id is the sorted '+'-joined set of contributing shards; it is final
    only when both parts are.
    """
    if (a.aggregation, a.kind, a.start_ms, a.end_ms, a.key) != (
            b.aggregation, b.kind, b.start_ms, b.end_ms, b.key):
        raise ValueError("merge: results are for different windows or keys")
    shards = sorted(set(a.shard_id.split("+")) | set(b.shard_id.split("+")))
    return WindowResult(
        a.kind,
        a.start_ms,
        a.end_ms,
        a.key,
        "+".join(shards),
        merge_aggregates(a.aggregates, b.aggregates),
        a.is_final and b.is_final,
        a.aggregation,
    )


class StepOutput(msgspec.Struct, gc=False):
    """What one engine step produced: results to deliver, late records to quarantine."""

    results: list[WindowResult]
    late: list[Rejected]
