"""A batch of records' fields held by column, for the chain's and the declared
aggregations' column paths.

Record i's fields are {name: columns[name][i]} without the names whose value there is
MISSING; whoever builds a FieldBatch guarantees that these are ALL of its top-level fields
(the decoder's clean batches have exactly the contract's). The column paths must give what
the record-by-record path gives over `rows()`; where they cannot, they materialise the rows
and take that path (consumer/transform/chain.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from typing import Any, overload

from consumer.transform.fields import MISSING


@dataclass(frozen=True, slots=True)
class FieldBatch:
    columns: Mapping[str, list[Any]]
    size: int

    def column(self, name: str) -> list[Any]:
        """The field's value per record (MISSING where a record lacks it)."""
        col = self.columns.get(name)
        return col if col is not None else list(repeat(MISSING, self.size))

    def with_column(self, name: str, values: list[Any]) -> FieldBatch:
        return FieldBatch({**self.columns, name: values}, self.size)

    def compress(self, mask: list[bool]) -> FieldBatch:
        cols = {n: list(compress(c, mask)) for n, c in self.columns.items()}
        return FieldBatch(cols, sum(mask))

    def rows(self) -> list[dict[str, Any]]:
        """Each record's fields as a dict (a new dict per record)."""
        names = list(self.columns)
        cols = list(self.columns.values())
        if not cols:
            return [{} for _ in range(self.size)]
        if not any(MISSING in c for c in cols):
            return [dict(zip(names, vals, strict=True)) for vals in zip(*cols, strict=True)]
        return [{n: v for n, v in zip(names, vals, strict=True) if v is not MISSING}
                for vals in zip(*cols, strict=True)]


class Rows(Sequence[Mapping[str, Any]]):
    """A FieldBatch as a sequence of field dicts, built on first access (a pipeline without
    declared aggregations never needs the chain's output as dicts)."""

    def __init__(self, batch: FieldBatch) -> None:
        self.batch = batch
        self._rows: list[dict[str, Any]] | None = None

    def _all(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = self.batch.rows()
        return self._rows

    def __len__(self) -> int:
        return self.batch.size

    @overload
    def __getitem__(self, i: int) -> Mapping[str, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Mapping[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        return self._all()[i]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self._all())
