"""Figures for `aetherstream bench processor` (pure): CPU accounting, sizes, the table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuTimes:
    """user + sys of one process, and of its children it has waited for (as getrusage)."""

    user: float
    system: float
    children_user: float = 0.0
    children_system: float = 0.0

    @property
    def total(self) -> float:
        return self.user + self.system + self.children_user + self.children_system


def tree_seconds(live: Iterable[CpuTimes]) -> float:
    """CPU seconds of a process tree from its live members. A process that has exited and
    been waited for is in its parent's children_* times; one still running only in its
    own, so adding every live member's total counts each second exactly once."""
    return sum(t.total for t in live)


def nearest_rank(sorted_values: Sequence[int], q: float) -> int:
    """The q-quantile by the nearest-rank method (an observed value, no interpolation)."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class SizeSummary:
    count: int
    median: int
    p90: int
    max: int

    def __str__(self) -> str:
        if not self.count:
            return "0 objects"
        return (f"{self.count} objects, median {human_bytes(self.median)}, "
                f"p90 {human_bytes(self.p90)}, max {human_bytes(self.max)}")


def size_summary(sizes: Iterable[int]) -> SizeSummary:
    values = sorted(sizes)
    if not values:
        return SizeSummary(0, 0, 0, 0)
    return SizeSummary(len(values), nearest_rank(values, 0.5), nearest_rank(values, 0.9),
                       values[-1])


def human_bytes(n: int) -> str:
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def per_second(amount: float, seconds: float) -> float:
    return amount / seconds if seconds > 0 else math.inf


def ratio(ours_rate: float, baseline_rate: float) -> float:
    """Our records per CPU-second as a fraction of the baseline's (1.0: as cheap)."""
    return ours_rate / baseline_rate if baseline_rate > 0 else math.nan


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(r) for r in rows)]
