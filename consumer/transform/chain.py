"""An ordered chain of steps over a batch: each step sees the records the steps before it
kept, in input order. Pure; never raises for a record (a step's Reject is data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from consumer.records.model import Rejected
from consumer.transform.lookup import LookupTable
from consumer.transform.model import ChainResult, Reject, TRecord, rejected
from consumer.transform.steps import Lookup, Step


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...] = ()

    def apply(self, batch: Sequence[TRecord]) -> ChainResult:
        # Parallel lists (input index, current fields): a step sees only fields, and a
        # TRecord is made once per record that comes through, not once per step.
        idx = list(range(len(batch)))
        cur: list[Mapping[str, Any]] = [t.fields for t in batch]
        refused: list[tuple[int, Rejected]] = []
        filtered: dict[str, int] = {}
        for step in self.steps:
            if not cur:
                break
            outcomes = step.run(cur)
            keep_i: list[int] = []
            keep_f: list[Mapping[str, Any]] = []
            dropped = 0
            for i, out in zip(idx, outcomes, strict=True):
                if out is None:
                    dropped += 1
                elif isinstance(out, Reject):
                    refused.append((i, rejected(step.name, batch[i].record, out)))
                else:
                    keep_i.append(i)
                    keep_f.append(out)
            if dropped:
                filtered[step.name] = filtered.get(step.name, 0) + dropped
            idx, cur = keep_i, keep_f
        refused.sort(key=lambda p: p[0])
        records = tuple(t if t.fields is out else TRecord(out, t.record)
                        for t, out in zip((batch[i] for i in idx), cur, strict=True))
        return ChainResult(records, tuple(r for _, r in refused), filtered)

    def lookups(self) -> dict[str, Lookup]:
        """The lookup steps by name, for the shell that refreshes their tables."""
        return {s.name: s for s in self.steps if isinstance(s, Lookup)}

    def with_tables(self, tables: Mapping[str, LookupTable]) -> Chain:
        """The same chain with these lookup steps' tables replaced (by step name)."""
        return replace(self, steps=tuple(
            s.with_table(tables[s.name]) if isinstance(s, Lookup) and s.name in tables else s
            for s in self.steps))
