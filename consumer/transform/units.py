"""Unit and type conversions for the `convert` step: pure functions of one value.

Units are affine, value * scale + offset into the dimension's base unit and back, so any two
units of one dimension convert. A value is converted only when it is a number (not a bool);
anything else is the record's problem, reported as a Reject.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from consumer.transform.model import Reject

# unit -> (dimension, scale, offset): base = value * scale + offset.
UNITS: dict[str, tuple[str, float, float]] = {
    "degC": ("temperature", 1.0, 0.0),
    "degF": ("temperature", 5 / 9, -32 * 5 / 9),
    "K": ("temperature", 1.0, -273.15),
    "m": ("length", 1.0, 0.0), "km": ("length", 1000.0, 0.0), "cm": ("length", 0.01, 0.0),
    "mm": ("length", 0.001, 0.0), "ft": ("length", 0.3048, 0.0), "in": ("length", 0.0254, 0.0),
    "mi": ("length", 1609.344, 0.0),
    "ms": ("time", 0.001, 0.0), "s": ("time", 1.0, 0.0), "us": ("time", 1e-6, 0.0),
    "ns": ("time", 1e-9, 0.0), "min": ("time", 60.0, 0.0), "h": ("time", 3600.0, 0.0),
    "g": ("mass", 1.0, 0.0), "kg": ("mass", 1000.0, 0.0), "lb": ("mass", 453.59237, 0.0),
    "Pa": ("pressure", 1.0, 0.0), "hPa": ("pressure", 100.0, 0.0),
    "kPa": ("pressure", 1000.0, 0.0), "bar": ("pressure", 1e5, 0.0),
    "psi": ("pressure", 6894.757293168, 0.0),
    "m/s": ("speed", 1.0, 0.0), "km/h": ("speed", 1 / 3.6, 0.0), "mph": ("speed", 0.44704, 0.0),
    "B": ("data", 1.0, 0.0), "KiB": ("data", 1024.0, 0.0), "MiB": ("data", 1024.0**2, 0.0),
    "kB": ("data", 1000.0, 0.0), "MB": ("data", 1e6, 0.0),
}
TYPES = ("int", "float", "str", "bool")


def unit_converter(src: str, dst: str) -> Callable[[Any], Any]:
    """A converter from `src` to `dst`; raises ValueError for unknown or unlike units."""
    for unit in (src, dst):
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; known: {', '.join(UNITS)}")
    (d1, s1, o1), (d2, s2, o2) = UNITS[src], UNITS[dst]
    if d1 != d2:
        raise ValueError(f"cannot convert {src} ({d1}) to {dst} ({d2})")

    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return Reject("convert_error", f"{src} -> {dst} needs a number, got {_shown(value)}")
        out = ((value * s1 + o1) - o2) / s2
        return out if math.isfinite(out) else Reject("non_finite", f"{value} {src} -> {out}")

    return convert


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def to_int(value: Any) -> Any:
    """ints; integral floats; decimal integer strings. A fraction is refused, not truncated."""
    if isinstance(value, bool):
        return Reject("convert_error", f"int needs a number or a digit string, got {_shown(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    return Reject("convert_error", f"int needs an integral number or a digit string, got "
                  f"{_shown(value)}")


def to_float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            out = math.nan
    else:
        out = math.nan
    return out if math.isfinite(out) else Reject(
        "convert_error", f"float needs a finite number or numeric string, got {_shown(value)}")


def to_str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return Reject("convert_error", f"str needs a scalar, got {_shown(value)}")


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    return Reject("convert_error", f"bool needs true/false, 0/1 or yes/no, got {_shown(value)}")


TYPE_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "int": to_int, "float": to_float, "str": to_str, "bool": to_bool,
}
