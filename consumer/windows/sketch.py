"""A mergeable DDSketch with sparse bins, serialisable to bytes.

It uses ddsketch's own LogarithmicMapping (same keys, same bucket values) and the same rank
rule as ddsketch.DDSketch.get_quantile_value, so quantiles equal what ddsketch returns for
the same values; tests check this. Why not ddsketch.DDSketch itself: its dense store costs
kilobytes per sketch, its protobuf serialisation needs an unpinned protobuf, and a window
result needs a small, mergeable byte form that a Redshift view or a sink can combine.

Windows keep raw values until RAW_LIMIT and only then fold them into bins: most groups in a
high-cardinality stream hold a handful of values, and a list of floats is cheaper than bins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import msgspec
from ddsketch.mapping import LogarithmicMapping

DEFAULT_ACCURACY = 0.01
RAW_LIMIT = 64


@lru_cache(maxsize=8)
def _mapping(accuracy: float) -> LogarithmicMapping:
    return LogarithmicMapping(accuracy)


class _Wire(msgspec.Struct, array_like=True):
    """On-the-wire form: [accuracy, zero count, positive bins, negative bins]."""

    accuracy: float
    zero: int
    pos: dict[int, int]
    neg: dict[int, int]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Wire)


class QuantileSketch:
    """Relative-accuracy quantile sketch: bins keyed by ddsketch's logarithmic mapping."""

    __slots__ = ("_map", "_min_possible", "accuracy", "neg", "pos", "zero")

    def __init__(self, accuracy: float = DEFAULT_ACCURACY) -> None:
        self.accuracy = accuracy
        self._map = _mapping(accuracy)
        self._min_possible: float = self._map.min_possible
        self.pos: dict[int, int] = {}
        self.neg: dict[int, int] = {}
        self.zero = 0

    @property
    def count(self) -> int:
        return self.zero + sum(self.pos.values()) + sum(self.neg.values())

    def add(self, v: float) -> None:
        if v > self._min_possible:
            k = self._map.key(v)
            self.pos[k] = self.pos.get(k, 0) + 1
        elif v < -self._min_possible:
            k = self._map.key(-v)
            self.neg[k] = self.neg.get(k, 0) + 1
        else:
            self.zero += 1

    def add_all(self, values: Iterable[float]) -> QuantileSketch:
        for v in values:
            self.add(v)
        return self

    def merge(self, other: QuantileSketch) -> None:
        """Add other's bins into this sketch (both must have the same accuracy)."""
        if other.accuracy != self.accuracy:
            raise ValueError(f"cannot merge sketches of accuracy {self.accuracy}, {other.accuracy}")
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for k, n in theirs.items():
                mine[k] = mine.get(k, 0) + n
        self.zero += other.zero

    def quantile(self, q: float) -> float | None:
        """ddsketch's rule: rank = q * (count - 1), negatives first, then zeros, then positives."""
        count = self.count
        if not 0.0 <= q <= 1.0 or count == 0:
            return None
        rank = q * (count - 1)
        neg_count = sum(self.neg.values())
        if rank < neg_count:
            reversed_rank = neg_count - rank - 1
            running = 0
            for k in sorted(self.neg):
                running += self.neg[k]
                if running >= reversed_rank + 1:
                    return -float(self._map.value(k))
            return -float(self._map.value(max(self.neg)))
        if rank < neg_count + self.zero:
            return 0.0
        rank -= neg_count + self.zero
        running = 0
        for k in sorted(self.pos):
            running += self.pos[k]
            if running > rank:
                return float(self._map.value(k))
        return float(self._map.value(max(self.pos)))

    def to_bytes(self) -> bytes:
        return _ENCODER.encode(_Wire(self.accuracy, self.zero, self.pos, self.neg))

    @classmethod
    def from_bytes(cls, data: bytes) -> QuantileSketch:
        w = _DECODER.decode(data)
        s = cls(w.accuracy)
        s.zero, s.pos, s.neg = w.zero, w.pos, w.neg
        return s


def sketch_bytes(values: list[float], accuracy: float) -> bytes:
    """Serialised sketch of raw values without building a QuantileSketch: the emission hot
    path with quantiles on (most groups hold a value or two). Same keys as mapping.key:
    int(ceil(log2(v) * multiplier) + offset)."""
    m = _mapping(accuracy)
    mult, off, tiny = m._multiplier, m._offset, m.min_possible
    pos: dict[int, int] = {}
    neg: dict[int, int] = {}
    zero = 0
    log, ceil = math.log, math.ceil
    for v in values:
        if v > tiny:
            k = int(ceil(log(v, 2) * mult) + off)
            pos[k] = pos.get(k, 0) + 1
        elif v < -tiny:
            k = int(ceil(log(-v, 2) * mult) + off)
            neg[k] = neg.get(k, 0) + 1
        else:
            zero += 1
    return _ENCODER.encode((accuracy, zero, pos, neg))  # the _Wire array layout


def merge_sketch_bytes(a: bytes | None, b: bytes | None) -> bytes | None:
    """Merge two serialised sketches; None means "no sketch" and yields the other."""
    if a is None or b is None:
        return a if b is None else b
    s = QuantileSketch.from_bytes(a)
    s.merge(QuantileSketch.from_bytes(b))
    return s.to_bytes()
