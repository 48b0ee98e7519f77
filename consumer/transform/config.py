"""The `[[transform]]` tables of the settings file -> a Chain.

Kept apart from consumer/config.py's sections (each a dataclass of scalars built from TOML
and env): a chain is an ordered list of tables, which has no environment-variable form. Every
problem is reported at load, one line each, naming the step (`transform[2] 'to-celsius'`),
the key and the rule, like the other settings' errors; expressions are compiled and lookup
tables and plug-ins loaded here, so a bad one stops the start, not a record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from consumer.config import ConfigError, settings_tables
from consumer.transform import steps as st
from consumer.transform.chain import Chain
from consumer.transform.expr import ExprSyntaxError, compile_expr
from consumer.transform.lookup import LookupTable, TableError
from consumer.transform.plugin import PluginError, load_plugin
from consumer.transform.tables import LookupSource, load_table
from consumer.transform.units import TYPE_CONVERTERS, TYPES, unit_converter

CONTRACT = "contract"  # consumer/transform/stage.py's reason prefix
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
KINDS = ("rename", "drop", "set", "derive", "convert", "filter", "lookup", "route", "plugin")
KEYS: dict[str, frozenset[str]] = {
    "rename": frozenset({"fields", "required"}),
    "drop": frozenset({"fields"}),
    "set": frozenset({"values"}),
    "derive": frozenset({"field", "expr"}),
    "convert": frozenset({"field", "into", "type", "from", "to", "required"}),
    "filter": frozenset({"expr"}),
    "lookup": frozenset({"source", "key", "table_key", "columns", "prefix", "on_miss",
                         "defaults", "refresh_s"}),
    "route": frozenset({"to", "when"}),
    "plugin": frozenset({"callable"}),
}


@dataclass(frozen=True)
class Configured:
    chain: Chain
    sources: tuple[LookupSource, ...]  # for the shell's Refresher


class _Bad(Exception):
    """One problem with one key of one step."""

    def __init__(self, key: str, rule: str) -> None:
        super().__init__(key, rule)
        self.key, self.rule = key, rule


TableLoader = Callable[[LookupSource], LookupTable]


def read_transform_tables(path: str | Path) -> list[Any]:
    """The file's `transform` array (empty when there is none); the rest is the settings'."""
    return settings_tables(path, "transform")


def load_chain(path: str | Path, s3: Callable[[], Any] | None = None) -> Configured:
    """The shell's entry: read, check and build the chain of a settings file."""
    base = Path(path).resolve().parent
    return parse_chain(read_transform_tables(path), f"file {path}", base,
                       lambda src: load_table(src, s3))


def parse_chain(tables: list[Any], source: str, base_dir: Path,
                load: TableLoader) -> Configured:
    problems: list[str] = []
    built: list[st.Step] = []
    sources: list[LookupSource] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        named = table.get("name") if isinstance(table, dict) else None
        label = f"transform[{i}] {named!r}" if isinstance(named, str) and named else \
            f"transform[{i}]"
        try:
            name, kind = _head(table, seen)
            step, src = _build(kind, name, table, base_dir, load)
        except _Bad as bad:
            problems.append(f"{label}: {bad.key}: {bad.rule} (from {source})")
            continue
        built.append(step)
        sources.extend([src] if src else [])
    if problems:
        raise ConfigError(*problems)
    return Configured(Chain(tuple(built)), tuple(sources))


def _head(table: Any, seen: set[str]) -> tuple[str, str]:
    if not isinstance(table, dict):
        raise _Bad("(table)", "each [[transform]] entry must be a table")
    name, kind = table.get("name"), table.get("kind")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _Bad("name", f"needs a name of letters, digits, '_', '-', '.', got {name!r}")
    if name in seen:
        raise _Bad("name", "names must be unique: filter counts and rejections use them")
    if name == CONTRACT:
        raise _Bad("name", f"{CONTRACT!r} is reserved: reason {CONTRACT}:<class> is a chain "
                   "output that fails the record contract")
    seen.add(name)
    if kind not in KINDS:
        raise _Bad("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    unknown = set(table) - {"name", "kind"} - KEYS[kind]
    if unknown:
        raise _Bad(", ".join(sorted(unknown)),
                   f"unknown for kind {kind!r}; it takes {', '.join(sorted(KEYS[kind]))}")
    return name, kind


def _build(kind: str, name: str, t: Mapping[str, Any], base: Path,
           load: TableLoader) -> tuple[st.Step, LookupSource | None]:
    if kind == "lookup":
        return _lookup(name, t, base, load)
    makers: dict[str, Callable[[str, Mapping[str, Any], Path], st.Step]] = {
        "rename": _rename, "drop": _drop, "set": _set, "derive": _derive,
        "convert": _convert, "filter": _filter, "route": _route, "plugin": _plugin,
    }
    return makers[kind](name, t, base), None


# ---------------------------------------------------------------- one value each


def _path(t: Mapping[str, Any], key: str, value: Any = None) -> tuple[str, ...]:
    value = t.get(key) if value is None else value
    if not isinstance(value, str) or not value or "" in value.split("."):
        raise _Bad(key, f"must be a dotted field path with no empty segment, got {value!r}")
    return tuple(value.split("."))


def _str(t: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = t.get(key, default)
    if not isinstance(value, str) or not value:
        raise _Bad(key, f"must be a non-empty string, got {value!r}")
    return value


def _bool(t: Mapping[str, Any], key: str) -> bool:
    value = t.get(key, False)
    if not isinstance(value, bool):
        raise _Bad(key, f"must be true or false, got {value!r}")
    return value


def _strings(t: Mapping[str, Any], key: str, default: Any = None) -> tuple[str, ...]:
    value = t.get(key, default)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v
                                                           for v in value):
        raise _Bad(key, f"must be a non-empty list of strings, got {value!r}")
    return tuple(value)


def _expr(t: Mapping[str, Any], key: str) -> Any:
    try:
        return compile_expr(_str(t, key))
    except ExprSyntaxError as exc:
        raise _Bad(key, f"not a CEL expression: {exc}") from None


def _table(t: Mapping[str, Any], key: str, default: Any = None) -> Mapping[str, Any]:
    value = t.get(key, default)
    if not isinstance(value, dict) or (default is None and not value):
        raise _Bad(key, f"must be a non-empty table, got {value!r}")
    return value


# ---------------------------------------------------------------- one kind each


def _rename(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    pairs = tuple((_path(t, "fields", k), _path(t, "fields", v))
                  for k, v in _table(t, "fields").items())
    return st.Rename(name, pairs, _bool(t, "required"))


def _drop(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    return st.Drop(name, tuple(_path(t, "fields", p) for p in _strings(t, "fields")))


def _set(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    return st.SetValues(name, tuple((_path(t, "values", k), v)
                                    for k, v in _table(t, "values").items()))


def _derive(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    return st.Derive(name, _path(t, "field"), _expr(t, "expr"))


def _convert(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    path = _path(t, "field")
    into = _path(t, "into") if "into" in t else path
    if "type" in t:
        if "from" in t or "to" in t:
            raise _Bad("type", "give either type, or from and to (units), not both")
        kind = t["type"]
        if kind not in TYPES:
            raise _Bad("type", f"must be one of {', '.join(TYPES)}, got {kind!r}")
        return st.Convert(name, path, into, TYPE_CONVERTERS[kind], _bool(t, "required"))
    try:
        fn = unit_converter(_str(t, "from"), _str(t, "to"))
    except ValueError as exc:
        raise _Bad("from/to", str(exc)) from None
    return st.Convert(name, path, into, fn, _bool(t, "required"))


def _filter(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    return st.Filter(name, _expr(t, "expr"))


def _route(name: str, t: Mapping[str, Any], _: Path) -> st.Step:
    return st.Route(name, _strings(t, "to"), _expr(t, "when") if "when" in t else None)


def _plugin(name: str, t: Mapping[str, Any], base: Path) -> st.Step:
    target = _str(t, "callable")
    try:
        return st.Plugin(name, target, load_plugin(target, base))
    except PluginError as exc:
        raise _Bad("callable", str(exc)) from None


def _lookup(name: str, t: Mapping[str, Any], base: Path,
            load: TableLoader) -> tuple[st.Step, LookupSource]:
    key = _path(t, "key")
    raw_source = _str(t, "source")
    source = raw_source if raw_source.startswith("s3://") else str(base / raw_source)
    refresh = t.get("refresh_s", 0)
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh < 0:
        raise _Bad("refresh_s", f"must be a number of seconds >= 0 (0: never), got {refresh!r}")
    on_miss = t.get("on_miss", "keep")
    if on_miss not in ("keep", "default", "reject"):
        raise _Bad("on_miss", f"must be one of keep, default, reject, got {on_miss!r}")
    defaults = _table(t, "defaults", {})
    if on_miss == "default" and not defaults:
        raise _Bad("defaults", "on_miss = 'default' needs a defaults table")
    prefix = t.get("prefix", "")
    if not isinstance(prefix, str):
        raise _Bad("prefix", f"must be a string, got {prefix!r}")
    src = LookupSource(name, source, _str(t, "table_key", key[-1]), float(refresh))
    try:
        table = load(src)
    except TableError as exc:
        raise _Bad("source", str(exc)) from None
    columns = _strings(t, "columns") if "columns" in t else None
    return st.Lookup(name, key, table, columns, prefix, on_miss,
                     tuple(defaults.items())), src
