"""An ordered chain of steps over a batch: each step sees the records the steps before it
kept, in input order. Pure; never raises for a record (a step's Reject is data)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import compress, repeat
from operator import is_not, itemgetter
from typing import Any

from consumer.transform.columns import FieldBatch, Rows
from consumer.transform.lookup import LookupTable
from consumer.transform.model import ChainResult, Reject, TRecord, rejected
from consumer.transform.steps import Lookup, Outcome, Step


@dataclass(frozen=True, slots=True)
class Passed:
    """What a chain made of a batch of fields, by input index: the kept records' indices
    (ascending) and output fields, the refused ones as (index, step name, verdict) in
    index order, and how many records each filter removed."""

    index: list[int]
    fields: Sequence[Mapping[str, Any]]
    refused: list[tuple[int, str, Reject]]
    filtered: dict[str, int]
    columns: FieldBatch | None = None  # the output fields by column, if it ran by columns


@dataclass(frozen=True)
class Chain:
    steps: tuple[Step, ...] = ()

    def apply(self, batch: Sequence[TRecord]) -> ChainResult:
        p = self.run([t.fields for t in batch])
        records = tuple(t if t.fields is out else TRecord(out, t.record)
                        for t, out in zip((batch[i] for i in p.index), p.fields, strict=True))
        return ChainResult(records, tuple(rejected(step, batch[i].record, why)
                                          for i, step, why in p.refused), p.filtered)

    def run(self, batch: Sequence[Mapping[str, Any]]) -> Passed:
        """The steps over a batch of fields. Parallel lists (input index, current fields):
        a step sees only fields, and the caller pairs the output with its records once."""
        return self._rows(self.steps, list(range(len(batch))), batch, {})

    def run_columns(self, batch: FieldBatch) -> Passed:
        """run(batch.rows()), by columns while the steps allow it (run_columns not None):
        from the first step that does not, over the rows of what is left."""
        idx = list(range(batch.size))
        filtered: dict[str, int] = {}
        for at, step in enumerate(self.steps):
            if not batch.size:
                break
            by_columns = getattr(step, "run_columns", None)
            kept = by_columns(batch) if by_columns is not None else None
            if kept is None:
                return self._rows(self.steps[at:], idx, batch.rows(), filtered)
            dropped = batch.size - kept.batch.size
            if kept.mask is not None and dropped:  # counted as the record path counts
                filtered[step.name] = filtered.get(step.name, 0) + dropped
                idx = list(compress(idx, kept.mask))
            batch = kept.batch
        return Passed(idx, Rows(batch), [], filtered, batch)

    def _rows(self, steps: Sequence[Step], idx: list[int], batch: Sequence[Mapping[str, Any]],
              filtered: dict[str, int]) -> Passed:
        cur = list(batch)
        refused: list[tuple[int, str, Reject]] = []
        for step in steps:
            if not cur:
                break
            outcomes = step.run(cur)
            if len(outcomes) != len(cur):
                raise ValueError(f"step {step.name!r} returned {len(outcomes)} outcomes "
                                 f"for {len(cur)} records")
            kinds = set(map(type, outcomes))
            if Reject in kinds:
                idx, cur = _sorted_out(step.name, idx, outcomes, refused, filtered)
            elif NONE in kinds:  # a filter's: by a mask, no Python step per record
                mask = list(map(is_not, outcomes, repeat(None)))
                kept: list[Any] = list(compress(outcomes, mask))
                filtered[step.name] = filtered.get(step.name, 0) + len(outcomes) - len(kept)
                idx, cur = list(compress(idx, mask)), kept
            else:
                cur = outcomes  # type: ignore[assignment]  # all of them are fields
        refused.sort(key=itemgetter(0))
        return Passed(idx, cur, refused, filtered)

    def may_write(self, paths: Sequence[tuple[str, ...]]) -> bool:
        """Whether some step may add, change or remove a field at one of `paths` (or
        above or below one). False means every record comes out of the chain with those
        fields exactly as it went in: the pipeline then keeps the key, event time and value
        it decoded instead of decoding the chain's output again."""
        for step in self.steps:
            writes = step.writes()
            if writes is None:
                return True
            if any(w[:len(p)] == p[:len(w)] for w in writes for p in paths):
                return True
        return False

    def lookups(self) -> dict[str, Lookup]:
        """The lookup steps by name, for the shell that refreshes their tables."""
        return {s.name: s for s in self.steps if isinstance(s, Lookup)}

    def with_tables(self, tables: Mapping[str, LookupTable]) -> Chain:
        """The same chain with these lookup steps' tables replaced (by step name)."""
        return replace(self, steps=tuple(
            s.with_table(tables[s.name]) if isinstance(s, Lookup) and s.name in tables else s
            for s in self.steps))


NONE = type(None)


def _sorted_out(name: str, idx: list[int], outcomes: Sequence[Outcome],
                refused: list[tuple[int, str, Reject]],
                filtered: dict[str, int]) -> tuple[list[int], list[Mapping[str, Any]]]:
    keep_i: list[int] = []
    keep_f: list[Mapping[str, Any]] = []
    dropped = 0
    for i, out in zip(idx, outcomes, strict=True):
        if out is None:
            dropped += 1
        elif out.__class__ is Reject:
            refused.append((i, name, out))
        else:
            keep_i.append(i)
            keep_f.append(out)  # type: ignore[arg-type]
    if dropped:
        filtered[name] = filtered.get(name, 0) + dropped
    return keep_i, keep_f
