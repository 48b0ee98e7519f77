"""Expressions for `derive`, `filter` and `route`: CEL, through common-expression-language
(Rust bindings of the cel-interpreter crate). See the package docstring for why CEL.

A record's fields are the expression's variables (`temp_f`, `payload.device`). They are
passed as CEL sees JSON (google.protobuf.Value): every number is a double. So the same
expression works whether a producer wrote `50` or `50.0`, and CEL's rule that int and double
do not mix in arithmetic becomes one rule for the user: write number literals with a point
(`(temp_f - 32.0) * 5.0 / 9.0`); `int(x)` gives an integer back. Comparisons mix freely
(`status == 200`). An integer above 2**53 loses precision inside an expression only; the
field itself is not changed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import methodcaller
from typing import Any

from consumer.transform.columns import FieldBatch
from consumer.transform.fields import MISSING
from consumer.transform.model import Reject

_UNDEFINED = re.compile(r"Undefined variable or function: '([^']*)'")
MAX_MESSAGE = 240


class ExprSyntaxError(ValueError):
    """An expression that does not compile; the message is CEL's, with the position."""


def _cel() -> Any:
    # Imported on first use: `import cel` also loads its REPL's libraries (~0.13 s), which a
    # processor without expressions should not pay.
    import cel  # type: ignore[import-untyped,unused-ignore]

    return cel


def as_cel(value: Any) -> Any:
    """A JSON value as CEL's JSON mapping has it: numbers are doubles."""
    kind = type(value)
    if kind is int:
        return float(value)
    if kind is dict:
        return {k: as_cel(v) for k, v in value.items()}
    if kind is list:
        return [as_cel(v) for v in value]
    return value


_ABSENT: Any = MISSING  # a variable the record lacks (a present null is None)
MEMO_CAP = 65_536  # entries per kind; emptied when full, it refills with what is current
# The memo's kinds: int and float share one, since CEL sees every number as a double.
_KIND: dict[type, type] = {str: str, bool: bool, int: float, float: float,
                           type(None): type(None), object: object}


def _memo_kind(kind: type, v: Any) -> type | None:
    """The memo a value of this kind goes in, or None: not a scalar, or a zero (-0.0 and
    0.0 are equal keys with different values) or nan (never equal to itself)."""
    k = _KIND.get(kind)
    return None if k is float and (v == 0 or v != v) else k


def _keep(value: Any) -> bool:
    """A value the memo may share between records: immutable (a scalar or a Reject)."""
    return value.__class__ in _KIND or value.__class__ is Reject


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled expression. CEL is pure (no clock, no randomness, no I/O: `now()` does
    not exist), so the value depends on the named variables alone: for one-variable
    expressions over a scalar, the value is memoised by the variable's value (per kind),
    since filters and routes mostly test fields with few values (a metric name, a status).
    Only scalar values and Rejects are kept (immutable, safe to share between records)."""

    source: str
    program: Any  # cel.Program
    names: tuple[str, ...]  # top-level identifiers (with comprehension variables)
    memo: dict[type, dict[Any, Any]] = field(default_factory=dict, compare=False, repr=False)

    def evaluate(self, fields: Mapping[str, Any]) -> Any | Reject:
        """The value, or a Reject (missing_field, expr_error, non_finite). Never raises."""
        names = self.names
        if len(names) != 1:
            return self._evaluate(fields)
        v = fields.get(names[0], _ABSENT)
        kind = _memo_kind(v.__class__, v)
        if kind is None:
            return self._evaluate(fields)
        sub = self.memo.setdefault(kind, {})
        out = sub.get(v, _ABSENT)
        if out is _ABSENT:
            out = self._evaluate(fields)
            if _keep(out):
                if len(sub) >= MEMO_CAP:
                    sub.clear()
                sub[v] = out
        return out

    def evaluate_many(self, batch: Sequence[Mapping[str, Any]]) -> list[Any]:
        """[evaluate(f) for f in batch]: for a one-variable expression whose variable has
        one memo kind across the batch, the memo is read for the whole batch at once and
        each value missing from it is evaluated once."""
        names = self.names
        if len(names) != 1:
            return list(map(self.evaluate, batch))
        vals = list(map(methodcaller("get", names[0], _ABSENT), batch))
        return self._by_value(vals, batch)

    def evaluate_columns(self, batch: FieldBatch) -> list[Any]:
        """evaluate_many(batch.rows()), without building the rows: the value depends on
        the named fields alone (see _evaluate)."""
        names = self.names
        if len(names) == 1:
            return self._by_value(batch.column(names[0]), None)
        named = [(n, batch.column(n)) for n in names]
        return [self.evaluate({n: c[i] for n, c in named if c[i] is not _ABSENT})
                for i in range(batch.size)]

    def _by_value(self, vals: list[Any], batch: Sequence[Mapping[str, Any]] | None
                  ) -> list[Any]:
        """A one-variable expression over its variable's values (batch: the records, or
        None: a record is evaluated from its value alone, which gives the same)."""
        evaluate, name = self.evaluate, self.names[0]

        def at(i: int) -> Any:
            if batch is not None:
                return evaluate(batch[i])
            return evaluate({} if vals[i] is _ABSENT else {name: vals[i]})

        kinds = {_KIND.get(k) for k in set(map(type, vals))}
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is None:  # mixed kinds, or not scalars
            return [at(i) for i in range(len(vals))]
        sub = self.memo.setdefault(kind, {})
        outs = list(map(sub.get, vals, repeat(_ABSENT)))
        if _ABSENT not in outs:
            return outs
        # Fills the memo, or not: a value it does not keep, a zero or nan (never stored, so
        # those always miss here and are evaluated one by one).
        return [o if o is not _ABSENT else at(i) for i, o in enumerate(outs)]

    def _evaluate(self, fields: Mapping[str, Any]) -> Any | Reject:
        env = {}
        for n in self.names:  # only the fields it names: passing a whole record costs 5x
            if n in fields:
                v = fields[n]
                kind = v.__class__
                env[n] = v if kind is float or kind is str else float(v) if kind is int \
                    else as_cel(v)
        try:
            value = self.program.execute(env)
        except Exception as exc:  # the library raises several types; all mean "this record"
            return _why(exc)
        kind = value.__class__
        if kind is float:
            return value if math.isfinite(value) else Reject(
                "non_finite", f"{self.source!r} gave {value}, not a JSON number")
        if kind is str or kind is bool or kind is int or value is None or is_json(value):
            return value
        return Reject("not_json", f"{self.source!r} gave {kind.__name__} {value!r:.60}, which "
                      "JSON cannot hold (string(...) turns timestamps and durations into text)")


def is_json(value: Any) -> bool:
    """A value the archive and the sinks can write: JSON's types, string keys, finite."""
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_json(v) for k, v in value.items())
    return False


def _why(exc: Exception) -> Reject:
    text = " ".join(str(exc).split())
    missing = _UNDEFINED.search(text)
    if missing:
        return Reject("missing_field", f"no field {missing.group(1)!r}")
    if isinstance(exc, KeyError):
        return Reject("missing_field", f"no field {text}")
    return Reject("expr_error", text[:MAX_MESSAGE])


def compile_expr(source: str) -> Expr:
    """Compile once, at settings load. Raises ExprSyntaxError with CEL's message."""
    cel = _cel()
    try:
        program = cel.compile(source)
    except ValueError as exc:
        raise ExprSyntaxError(" ".join(str(exc).split())[:MAX_MESSAGE]) from None
    return Expr(source, program, tuple(program.variables()))
