"""Schema versions of a parsed record: which version it is, and how it drifts from it.

Pure and I/O free. decode.py uses `select` to pick a record's version (then decodes it with
that version's single contract) and `observe` for the drift it reports as data:

  type_change    a declared field (a required one always counts as declared, with the types
                 decode accepts for it) holds another JSON type; also a path's parent that
                 is not an object
  unknown_field  a field the version does not declare, when it declares its fields; only
                 the outermost unknown field is named ("extra", not "extra.a")

The version field and a `present` selector's path are always known. Field names are the
record's own: the shell bounds them before they become metric labels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from consumer.records.contract import SchemaVersion, Selector, split_path

UNKNOWN_FIELD = "unknown_field"
TYPE_CHANGE = "type_change"
Drift = tuple[str, str]  # (field path, kind)

_MISSING = object()
_TYPES: dict[type, str] = {type(None): "null", bool: "boolean", int: "integer", float: "number",
                           str: "string", list: "array", dict: "object"}


def json_type(v: object) -> str:
    """The JSON type of a parsed value; integers are "integer", other numbers "number"."""
    return _TYPES.get(type(v), type(v).__name__)


Accepted = frozenset[type]
# A JSON type name -> the Python types of parsed values it accepts (bool is not int here).
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),), "boolean": (bool,), "integer": (int,), "number": (int, float),
    "string": (str,), "array": (list,), "object": (dict,)}


def _accepting(names: tuple[str, ...] | str) -> Accepted:
    names = (names,) if isinstance(names, str) else names
    return frozenset(t for n in names for t in _PY_TYPES[n])


def get_path(obj: dict[str, Any], segs: tuple[str, ...]) -> object:
    """The value at a path, or _MISSING (also when a parent is not an object)."""
    cur: object = obj
    for seg in segs:
        if not isinstance(cur, dict) or seg not in cur:
            return _MISSING
        cur = cur[seg]
    return cur


class VersionRule:
    """A SchemaVersion compiled for selection and drift checks."""

    def __init__(self, version: SchemaVersion, version_field: str) -> None:
        self.version = version
        self.name = version.name
        self.when: tuple[Selector, ...] = version.when
        self._when = frozenset((type(w), w) for w in version.when)
        self.present = split_path(version.present) if version.present else ()
        required = version.required_types()
        self.expected = {p: " or ".join(t) for p, t in required.items()}
        self.required = [(p, split_path(p), _accepting(t)) for p, t in required.items()]
        self.declares = bool(version.fields)
        declared: dict[tuple[str, ...], Accepted | None] = {
            split_path(p): _accepting(t) for p, t in version.fields}
        for p, _, _ in self.required:
            declared[split_path(p)] = None  # checked with `required`, counted once
        for extra in (version_field, version.present):
            if extra:
                declared.setdefault(split_path(extra), None)  # known, any type
        self.declared = declared
        self.parents = {segs[:i] for segs in declared for i in range(1, len(segs))}
        # Every known path top-level (the common case): lookups and a set difference.
        self.flat = not self.parents
        self.top = frozenset(segs[0] for segs in declared)
        self.flat_checks = [(p, t) for p, _, t in self.required] + [
            (segs[0], t) for segs, t in declared.items() if t is not None]

    def matches(self, obj: dict[str, Any], version_segs: tuple[str, ...]) -> bool:
        if self.when:
            got = get_path(obj, version_segs)
            # Same JSON type and value: 1 is neither "1" nor true.
            if type(got) not in (str, int) or (type(got), got) not in self._when:
                return False
        return not self.present or get_path(obj, self.present) is not _MISSING


def select(obj: dict[str, Any], rules: Sequence[VersionRule],
           version_segs: tuple[str, ...]) -> VersionRule | None:
    """The first version whose selector holds for the record, or None."""
    for rule in rules:
        if rule.matches(obj, version_segs):
            return rule
    return None


def observe(obj: dict[str, Any], rule: VersionRule) -> Iterator[Drift]:
    """Every drift of one record from its version, each (field, kind) at most once."""
    if rule.flat:
        for key, accepted in rule.flat_checks:
            v = obj.get(key, _MISSING)
            if v is not _MISSING and type(v) not in accepted:
                yield key, TYPE_CHANGE
        if rule.declares:
            for key in obj.keys() - rule.top:
                yield key, UNKNOWN_FIELD
        return
    for path, segs, accepted in rule.required:
        v = get_path(obj, segs)
        if v is not _MISSING and type(v) not in accepted:
            yield path, TYPE_CHANGE
    if rule.declares:
        yield from _walk(obj, (), rule)


def _walk(node: dict[str, Any], prefix: tuple[str, ...], rule: VersionRule) -> Iterator[Drift]:
    for key, v in node.items():
        segs = (*prefix, key)
        if segs in rule.declared:
            accepted = rule.declared[segs]
            if accepted is not None and type(v) not in accepted:
                yield ".".join(segs), TYPE_CHANGE
        elif segs in rule.parents:
            if isinstance(v, dict):
                yield from _walk(v, segs, rule)
            else:
                yield ".".join(segs), TYPE_CHANGE  # it should hold declared fields
        else:
            yield ".".join(segs), UNKNOWN_FIELD


def type_change_message(obj: dict[str, Any], rule: VersionRule, path: str) -> str:
    seen = json_type(get_path(obj, split_path(path)))
    return (f"field {path!r} changed type (schema version {rule.name!r}): expected "
            f"{rule.expected.get(path, '?')}, got {seen}")


def unknown_version_message(obj: dict[str, Any], rules: Sequence[VersionRule],
                            version_field: str) -> str:
    def selector(r: VersionRule) -> str:
        parts = [f"{version_field} in {list(r.when)!r}"] if r.when else []
        parts += [f"has {'.'.join(r.present)!r}"] if r.present else []
        return f"{r.name} ({' and '.join(parts)})"

    got = ""
    if version_field:
        v = get_path(obj, split_path(version_field))
        shown = "missing" if v is _MISSING else _short(repr(v))
        got = f"field {version_field!r} is {shown}; "
    return f"{got}no schema version matches: " + ", ".join(map(selector, rules))


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
