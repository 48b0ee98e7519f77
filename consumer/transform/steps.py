"""The steps of a chain. Each is pure: given a batch of records' fields it returns, aligned
with the batch, one outcome per record: the record's new fields, None (a filter removed it), or a
Reject. No step changes the dicts it is given.

Missing fields, by step: rename, convert and lookup leave a record without the field as it
is unless the step says `required = true` (then: Reject missing_field); derive, filter and
route reject a record whose expression names a field it lacks (missing_field). A null is a
value, except that convert treats it as missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

from consumer.transform import fields as f
from consumer.transform.columns import FieldBatch
from consumer.transform.expr import Expr
from consumer.transform.lookup import LookupTable, key_text
from consumer.transform.model import ROUTE_FIELD, Reject

Outcome = Mapping[str, Any] | Reject | None
_KEPT_AS_IS = {str, type(None), type(f.MISSING)}  # key types whose miss changes nothing
Path = tuple[str, ...]


class Step(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]: ...

    def writes(self) -> tuple[Path, ...] | None:
        """Every field path the step may add, change or remove (None: any, a plug-in)."""
        ...


@dataclass(frozen=True, slots=True)
class Kept:
    """A step's output over a FieldBatch (its run_columns): the records it kept, and which
    of its input those are (mask; None: all of them)."""

    batch: FieldBatch
    mask: list[bool] | None = None


class RecordStep:
    """A step defined record by record (all but the plug-in)."""

    name: str
    kind: str

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        raise NotImplementedError

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        one = self.one
        return [one(fields) for fields in batch]


def _put(fields: Mapping[str, Any], path: Path, value: Any) -> Mapping[str, Any] | Reject:
    try:
        return f.put(fields, path, value)
    except f.PathConflict as exc:
        return Reject("path_conflict", str(exc))


def _missing(path: Path) -> Reject:
    return Reject("missing_field", f"no field {'.'.join(path)!r}")


@dataclass(frozen=True)
class Rename(RecordStep):
    name: str
    pairs: tuple[tuple[Path, Path], ...]  # (from, to)
    required: bool = False
    kind: str = "rename"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        out = fields
        for src, dst in self.pairs:
            value = f.get(out, src)
            if value is f.MISSING:
                if self.required:
                    return _missing(src)
                continue
            moved = _put(f.delete(out, src), dst, value)
            if isinstance(moved, Reject):
                return moved
            out = moved
        return out

    def writes(self) -> tuple[Path, ...]:
        return tuple(p for pair in self.pairs for p in pair)


@dataclass(frozen=True)
class Drop(RecordStep):
    name: str
    paths: tuple[Path, ...]
    kind: str = "drop"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        out = fields
        for path in self.paths:
            out = f.delete(out, path)
        return out

    def writes(self) -> tuple[Path, ...]:
        return self.paths


@dataclass(frozen=True)
class SetValues(RecordStep):
    name: str
    values: tuple[tuple[Path, Any], ...]
    kind: str = "set"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        out = fields
        for path, value in self.values:
            new = _put(out, path, value)
            if isinstance(new, Reject):
                return new
            out = new
        return out

    def writes(self) -> tuple[Path, ...]:
        return tuple(path for path, _ in self.values)


@dataclass(frozen=True)
class Derive(RecordStep):
    name: str
    path: Path
    expr: Expr
    kind: str = "derive"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        value = self.expr.evaluate(fields)
        if value.__class__ is Reject:
            return value
        if len(self.path) == 1:
            return {**fields, self.path[0]: value}
        return _put(fields, self.path, value)

    def run_columns(self, batch: FieldBatch) -> Kept | None:
        """run() over columns; None when the record path must say which record fails."""
        if len(self.path) != 1:
            return None
        values = self.expr.evaluate_columns(batch)
        if Reject in set(map(type, values)):
            return None
        return Kept(batch.with_column(self.path[0], values))

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        if len(self.path) != 1:
            return RecordStep.run(self, batch)
        name = self.path[0]
        return [value if value.__class__ is Reject else {**fields, name: value}
                for fields, value in zip(batch, self.expr.evaluate_many(batch), strict=True)]

    def writes(self) -> tuple[Path, ...]:
        return (self.path,)


@dataclass(frozen=True)
class Convert(RecordStep):
    name: str
    path: Path
    into: Path
    convert: Callable[[Any], Any]  # value -> value | Reject
    required: bool = False
    kind: str = "convert"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        value = f.get(fields, self.path)
        if value is f.MISSING or value is None:
            return _missing(self.path) if self.required else fields
        out = self.convert(value)
        if isinstance(out, Reject):
            return Reject(out.reason, f"field {'.'.join(self.path)!r}: {out.message}")
        return _put(fields, self.into, out)

    def writes(self) -> tuple[Path, ...]:
        return (self.into,)


def _truth(expr: Expr, fields: Mapping[str, Any]) -> bool | Reject:
    value = expr.evaluate(fields)
    if isinstance(value, Reject | bool):
        return value
    return Reject("not_a_bool", f"{expr.source!r} gave {type(value).__name__} {value!r:.60}, "
                  "not true or false")


@dataclass(frozen=True)
class Filter(RecordStep):
    """Keeps the records for which `expr` is true; the others are counted under its name."""

    name: str
    expr: Expr
    kind: str = "filter"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        keep = _truth(self.expr, fields)
        if isinstance(keep, Reject):
            return keep
        return fields if keep else None

    def run_columns(self, batch: FieldBatch) -> Kept | None:
        """run() over columns; None unless every record's value is true or false."""
        keep = self.expr.evaluate_columns(batch)
        if not set(map(type, keep)) <= {bool}:
            return None
        return Kept(batch.compress(keep), keep)

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        one = self.one
        return [fields if keep is True else None if keep is False else one(fields)
                for fields, keep in zip(batch, self.expr.evaluate_many(batch), strict=True)]

    def writes(self) -> tuple[Path, ...]:
        return ()


@dataclass(frozen=True)
class Lookup(RecordStep):
    """Adds a table row's columns (all but the key, or `columns`) under `prefix`.

    A miss (no row, or a key field that is missing, null or not a string/integer/bool):
    on_miss "keep" passes the record unchanged, "default" adds `defaults`, "reject"
    rejects it with reason lookup_miss."""

    name: str
    key: Path
    table: LookupTable
    columns: tuple[str, ...] | None = None
    prefix: str = ""
    on_miss: str = "keep"  # keep, default, reject
    defaults: tuple[tuple[str, Any], ...] = ()
    kind: str = "lookup"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        text = key_text(f.get(fields, self.key))
        row = self._added.get(text) if text is not None else None
        if row is None:
            return self._miss(fields, text)
        return {**fields, **row}

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        if len(self.key) != 1:
            return RecordStep.run(self, batch)
        name, one = self.key[0], self.one
        added: Mapping[Any, Mapping[str, Any]] = self._added
        try:  # by the key's value: a string matches its text, anything else goes to one()
            rows = list(map(added.get, [fields.get(name) for fields in batch]))
        except TypeError:  # a list or object as the key: no row, one() says why
            return RecordStep.run(self, batch)
        return [one(fields) if row is None else {**fields, **row}
                for fields, row in zip(batch, rows, strict=True)]

    def run_columns(self, batch: FieldBatch) -> Kept | None:
        """run() over columns, for a top-level key. None when a record misses and the miss
        is not simply kept as it is: on_miss "default" or "reject", or a key that is not a
        string (its text may still find a row: one() decides)."""
        if len(self.key) != 1:
            return None
        keys = batch.column(self.key[0])
        # A string, null or missing key that misses keeps the record as it is; any other
        # key might still hit by its text (key_text), and other on_miss modes add or refuse.
        if not set(map(type, keys)) <= _KEPT_AS_IS or self.on_miss != "keep":
            try:
                hit_all = self._added.keys() >= set(keys)
            except TypeError:  # a list or object as the key
                return None
            if not hit_all:
                return None
        names, by_key = self._by_key
        # One probe per record; a miss adds nothing (MISSING in every field).
        rows = list(map(by_key.get, keys, repeat((f.MISSING,) * len(names))))
        for i, name in enumerate(names):
            got = list(map(itemgetter(i), rows))
            if name in batch.columns:  # the row's value wins where it has one
                got = [o if g is f.MISSING else g
                       for g, o in zip(got, batch.columns[name], strict=True)]
            batch = batch.with_column(name, got)
        return Kept(batch)

    @cached_property
    def _by_key(self) -> tuple[tuple[str, ...], dict[str, tuple[Any, ...]]]:
        """Every field a hit may add, and per key text the values a hit adds to them
        (MISSING where its row has none), built once per table."""
        names = tuple(dict.fromkeys(n for row in self._added.values() for n in row))
        return names, {text: tuple(row.get(n, f.MISSING) for n in names)
                       for text, row in self._added.items()}

    @cached_property
    def _added(self) -> Mapping[str, Mapping[str, Any]]:
        """Per key text, the fields a hit adds (columns picked, prefix applied), built once
        per table."""
        cols = self.columns
        return {text: {self.prefix + c: row[c] for c in (row if cols is None else cols)
                       if c in row}
                for text, row in self.table.rows.items()}

    def _miss(self, fields: Mapping[str, Any], text: str | None) -> Outcome:
        if self.on_miss == "keep":
            return fields
        if self.on_miss == "default":
            return {**fields, **{self.prefix + k: v for k, v in self.defaults}}
        shown = "no usable key" if text is None else f"key {text!r}"
        return Reject("lookup_miss", f"{shown} in {'.'.join(self.key)!r} is not in "
                      f"{self.table.source}")

    def with_table(self, table: LookupTable) -> Lookup:
        return replace(self, table=table)

    def writes(self) -> tuple[Path, ...]:
        cols = set(self.columns) if self.columns is not None else {
            c for row in self.table.rows.values() for c in row}
        cols.update(k for k, _ in self.defaults)
        return tuple((self.prefix + c,) for c in sorted(cols))


@dataclass(frozen=True)
class Route(RecordStep):
    """Adds `to` to the record's `_aggregations` (in order, once each), when `when` holds."""

    name: str
    to: tuple[str, ...]
    when: Expr | None = None
    kind: str = "route"

    def one(self, fields: Mapping[str, Any]) -> Outcome:
        if self.when is not None:
            hit = _truth(self.when, fields)
            if isinstance(hit, Reject) or not hit:
                return hit if isinstance(hit, Reject) else fields
        current = fields.get(ROUTE_FIELD, [])
        if not isinstance(current, list) or not all(isinstance(n, str) for n in current):
            return Reject("bad_route_field", f"{ROUTE_FIELD} must be a list of names, "
                          f"got {current!r:.60}")
        names = current + [n for n in self.to if n not in current]
        return {**fields, ROUTE_FIELD: names}

    def writes(self) -> tuple[Path, ...]:
        return ((ROUTE_FIELD,),)


PluginFn = Callable[[list[dict[str, Any]]], Sequence[Any]]


@dataclass(frozen=True)
class Plugin:
    """A user callable: a list of field dicts in, a list as long out, each a dict (the new
    fields), None (filtered, counted under the step's name) or a Reject. If the batch call
    raises or breaks that contract, each record is tried alone, so one bad record is
    rejected (plugin_error / plugin_contract) and the others are not."""

    name: str
    target: str  # module:function, for messages
    fn: PluginFn
    kind: str = "plugin"

    def writes(self) -> None:
        return None  # a plug-in may change anything

    def run(self, batch: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        whole = self._call([dict(fields) for fields in batch])
        if not isinstance(whole, Reject):
            return whole
        return [self._one(fields) for fields in batch]

    def _one(self, fields: Mapping[str, Any]) -> Outcome:
        out = self._call([dict(fields)])
        return out if isinstance(out, Reject) else out[0]

    def _call(self, dicts: list[dict[str, Any]]) -> list[Outcome] | Reject:
        try:
            out = list(self.fn(dicts))
        except Exception as exc:  # a plug-in's bug is this batch's problem, not the shard's
            return Reject("plugin_error", f"{self.target} raised {type(exc).__name__}: "
                          f"{exc}"[:240])
        if len(out) != len(dicts) or not all(_outcome(o) for o in out):
            return Reject("plugin_contract", f"{self.target} must return a list as long as "
                          "its input, of dicts, None or Reject")
        return out


def _outcome(o: Any) -> bool:
    return o is None or isinstance(o, Reject) or (
        isinstance(o, Mapping) and all(isinstance(k, str) for k in o))
