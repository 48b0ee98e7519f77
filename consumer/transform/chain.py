"""An ordered chain of steps over a batch: each step sees the records the steps before it
kept, in input order. Pure; never raises for a record (a step's Reject is data)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from consumer.records.model import Rejected
from consumer.transform.lookup import LookupTable
from consumer.transform.model import ChainResult, Reject, TRecord, rejected
from consumer.transform.steps import Lookup, Step


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...] = ()

    def apply(self, batch: Sequence[TRecord]) -> ChainResult:
        live = list(enumerate(batch))
        refused: list[tuple[int, Rejected]] = []
        filtered: Counter[str] = Counter()
        for step in self.steps:
            if not live:
                break
            outcomes = step.run([t for _, t in live])
            kept = []
            for (i, t), out in zip(live, outcomes, strict=True):
                if out is None:
                    filtered[step.name] += 1
                elif isinstance(out, Reject):
                    refused.append((i, rejected(step.name, t.record, out)))
                else:
                    kept.append((i, t if out is t.fields else TRecord(out, t.record)))
            live = kept
        refused.sort(key=lambda p: p[0])
        return ChainResult(tuple(t for _, t in live), tuple(r for _, r in refused),
                           dict(filtered))

    def lookups(self) -> dict[str, Lookup]:
        """The lookup steps by name, for the shell that refreshes their tables."""
        return {s.name: s for s in self.steps if isinstance(s, Lookup)}

    def with_tables(self, tables: Mapping[str, LookupTable]) -> Chain:
        """The same chain with these lookup steps' tables replaced (by step name)."""
        return replace(self, steps=tuple(
            s.with_table(tables[s.name]) if isinstance(s, Lookup) and s.name in tables else s
            for s in self.steps))
