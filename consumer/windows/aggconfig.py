"""The `[[aggregation]]` tables of the settings file -> Aggregations.

Like the `[[transform]]` chain (consumer/transform/config.py), an array of tables has no
environment-variable form, so it is read from the settings file apart from the Settings
sections. Every problem is reported at load, one line each, naming the aggregation, the key
and the rule.

    [[aggregation]]
    name = "per_metric"            # a-z, 0-9, '_' (a letter first); unique
    group_by = ["metric"]          # field paths, derived fields included
    value = "value"                # the numeric field measured (default: contract.value_field;
                                   # with schema versions, each record's version's)
    filter = "value >= 0.0"        # optional CEL predicate over the record's fields
    quantiles = true               # p50/p90/p99 sketches (default false)
    [aggregation.window]           # default: tumbling 60 s, lateness 0, out-of-orderness 5 s
    kind = "sliding"
    size_ms = 300000
    slide_ms = 60000
    allowed_lateness_ms = 10000
    out_of_orderness_ms = 5000
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consumer.config import ConfigError, Settings, settings_tables
from consumer.transform.expr import ExprSyntaxError, compile_expr
from consumer.windows.aggregations import Aggregation
from consumer.windows.model import WindowSpec

# A name is part of an S3 prefix, a Redshift table and an OpenSearch index name: lower-case
# letters, digits and '_', so it needs no quoting or escaping in any of them.
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")
KEYS = frozenset({"name", "group_by", "value", "filter", "quantiles", "window"})
WINDOW_KEYS = frozenset({"kind", "size_ms", "slide_ms", "gap_ms", "allowed_lateness_ms",
                         "out_of_orderness_ms", "idle_timeout_ms"})


class _Bad(Exception):
    def __init__(self, key: str, rule: str) -> None:
        super().__init__(key, rule)
        self.key, self.rule = key, rule


def read_aggregation_tables(path: str | Path) -> list[Any]:
    return settings_tables(path, "aggregation")


def load_aggregations(path: str | Path | None, settings: Settings) -> tuple[Aggregation, ...]:
    """The declared aggregations of a settings file (none without a file)."""
    if not path:
        return ()
    return parse_aggregations(read_aggregation_tables(path), f"file {path}", settings)


def parse_aggregations(tables: list[Any], source: str,
                       settings: Settings) -> tuple[Aggregation, ...]:
    problems: list[str] = []
    built: list[Aggregation] = []
    seen: set[str] = set()
    for i, t in enumerate(tables):
        named = t.get("name") if isinstance(t, dict) else None
        label = f"aggregation[{i}] {named!r}" if isinstance(named, str) else f"aggregation[{i}]"
        try:
            built.append(_one(t, seen, settings))
        except _Bad as bad:
            problems.append(f"{label}: {bad.key}: {bad.rule} (from {source})")
    if problems:
        raise ConfigError(*problems)
    return tuple(built)


def _one(t: Any, seen: set[str], settings: Settings) -> Aggregation:
    if not isinstance(t, dict):
        raise _Bad("(table)", "each [[aggregation]] entry must be a table")
    name = t.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _Bad("name", "needs a name of lower-case letters, digits and '_' (a letter "
                   f"first, at most 40), got {name!r}")
    if name in seen:
        raise _Bad("name", "names must be unique: results prefixes and ids use them")
    seen.add(name)
    unknown = set(t) - KEYS
    if unknown:
        raise _Bad(", ".join(sorted(unknown)), f"unknown; an aggregation takes "
                   f"{', '.join(sorted(KEYS))}")
    group_by = t.get("group_by")
    if not isinstance(group_by, list) or not group_by:
        raise _Bad("group_by", f"must be a non-empty list of field paths, got {group_by!r}")
    quantiles = t.get("quantiles", False)
    if not isinstance(quantiles, bool):
        raise _Bad("quantiles", f"must be true or false, got {quantiles!r}")
    c = settings.contract
    # With schema versions the value field is each version's own: the decoder's reading.
    value = None if "value" not in t and c.versions else _path(
        "value", t.get("value", c.value_field))
    return Aggregation(
        name=name, group_by=tuple(_path("group_by", p) for p in group_by), value=value,
        spec=_spec(t, quantiles), filter=_filter(t))


def _path(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, str) or not value or "" in value.split("."):
        raise _Bad(key, f"must be a dotted field path with no empty segment, got {value!r}")
    return tuple(value.split("."))


def _filter(t: Mapping[str, Any]) -> Any:
    src = t.get("filter")
    if src is None:
        return None
    if not isinstance(src, str) or not src:
        raise _Bad("filter", f"must be a CEL expression, got {src!r}")
    try:
        return compile_expr(src)
    except ExprSyntaxError as exc:
        raise _Bad("filter", f"not a CEL expression: {exc}") from None


def _spec(t: Mapping[str, Any], quantiles: bool) -> WindowSpec:
    w = t.get("window", {})
    if not isinstance(w, dict):
        raise _Bad("window", f"must be a table, got {w!r}")
    unknown = set(w) - WINDOW_KEYS
    if unknown:
        raise _Bad("window." + ", window.".join(sorted(unknown)),
                   f"unknown; a window takes {', '.join(sorted(WINDOW_KEYS))}")
    try:
        return WindowSpec(quantiles=quantiles, **w)
    except (TypeError, ValueError) as exc:
        raise _Bad("window", str(exc)) from None
