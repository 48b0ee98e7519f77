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
from typing import Any

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


_ABSENT: Any = object()  # a variable the record lacks (a present null is None)
MEMO_CAP = 65_536  # entries; the memo is emptied when full and refills with what is current


def _memo_key(kind: type, v: Any) -> bool:
    # Scalars only, and no float whose equal twin differs (-0.0 == 0.0) or nan (!= itself).
    return kind is str or kind is int or kind is bool or v is None or v is _ABSENT or (
        kind is float and v == v and v != 0.0)


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled expression. CEL is pure (no clock, no randomness, no I/O: `now()` does
    not exist), so the value depends on the named variables alone: for one-variable
    expressions over a scalar, the value is memoised by (type, value), since filters and
    routes mostly test fields with few values (a metric name, a status). Only scalar values
    and Rejects are kept (immutable, safe to share between records)."""

    source: str
    program: Any  # cel.Program
    names: tuple[str, ...]  # top-level identifiers (with comprehension variables)
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    def evaluate(self, fields: Mapping[str, Any]) -> Any | Reject:
        """The value, or a Reject (missing_field, expr_error, non_finite). Never raises."""
        names = self.names
        if len(names) != 1:
            return self._evaluate(fields)
        v = fields.get(names[0], _ABSENT)
        kind = v.__class__
        if not _memo_key(kind, v):
            return self._evaluate(fields)
        memo = self.memo
        key = (kind, v)
        out = memo.get(key, _ABSENT)
        if out is _ABSENT:
            out = self._evaluate(fields)
            if _memo_key(out.__class__, out) or out.__class__ is Reject:
                if len(memo) >= MEMO_CAP:
                    memo.clear()
                memo[key] = out
        return out

    def evaluate_many(self, batch: Sequence[Mapping[str, Any]]) -> list[Any]:
        """[evaluate(f) for f in batch], with one evaluation per distinct value of a
        one-variable expression (memoised as evaluate does)."""
        names = self.names
        if len(names) != 1:
            return list(map(self.evaluate, batch))
        name = names[0]
        vals = [f.get(name, _ABSENT) for f in batch]
        keys = list(zip(map(type, vals), vals, strict=True))
        try:
            uniq = set(keys)
        except TypeError:  # a list or object value: not a memo key
            return list(map(self.evaluate, batch))
        zero = (float, 0.0)  # equal to (float, -0.0): those records go one by one
        has_zero = zero in uniq
        uniq.discard(zero)
        memo, found = self.memo, {}
        for key in uniq:
            out = memo.get(key, _ABSENT)
            if out is _ABSENT:
                out = self.evaluate({} if key[1] is _ABSENT else {name: key[1]})
            found[key] = out
        if not has_zero:
            return list(map(found.__getitem__, keys))
        return [self.evaluate(f) if k == zero else found[k]
                for f, k in zip(batch, keys, strict=True)]

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
