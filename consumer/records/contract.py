"""The record contract: where a record's key, event time and value live, and the limits.

A `Contract` is configuration, validated once at construction so the decoder's hot path can
trust it. Field paths are dotted ("payload.device"); a segment may not be empty.

Schema versions: a contract may declare `versions`, tried in order; the first whose selector
holds decides where that record's key, time and value live and which fields (with JSON
types) it declares. A selector is `when` (values of the contract's `version_field`), and/or
`present` (a field path the record has); a version with neither matches any record and must
come last. A contract without versions is exactly the single-schema contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

TsFormat = Literal["auto", "iso", "epoch_ms"]
TS_FORMATS: tuple[str, ...] = ("auto", "iso", "epoch_ms")

# Kinesis caps a record (data + partition key) at 1 MiB.
DEFAULT_MAX_RECORD_BYTES = 1_048_576


def split_path(path: str) -> tuple[str, ...]:
    """'a.b.c' -> ('a', 'b', 'c')."""
    return tuple(path.split("."))


def _check_path(name: str, path: object) -> None:
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name}: field path must be a non-empty string, got {path!r}")
    if any(seg == "" for seg in path.split(".")):
        raise ValueError(f"{name}: field path {path!r} has an empty segment")


# JSON types a version may declare; "number" also accepts integers.
JSON_TYPES: tuple[str, ...] = ("string", "number", "integer", "boolean", "object", "array", "null")
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
Selector = str | int  # a `when` value: JSON string or integer (never a boolean)


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One schema version, resolved: every path set (parse_versions fills in the contract's).

    fields: declared (path, JSON type) pairs; () means "not declared", so no field is
    unknown. The required paths (keys, ts, value) are implicitly declared.
    """

    name: str
    key_fields: tuple[str, ...]
    ts_field: str
    value_field: str
    ts_format: TsFormat = "auto"
    when: tuple[Selector, ...] = ()
    present: str = ""
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return (*self.key_fields, self.ts_field, self.value_field)

    @property
    def catch_all(self) -> bool:
        return not self.when and not self.present

    def required_types(self) -> dict[str, tuple[str, ...]]:
        """The JSON types decode accepts for each required path (what a type change breaks)."""
        ts = {"iso": ("string",), "epoch_ms": ("integer",)}.get(self.ts_format,
                                                               ("string", "integer"))
        out: dict[str, tuple[str, ...]] = {k: ("string",) for k in self.key_fields}
        return out | {self.ts_field: ts, self.value_field: ("number",)}


@dataclass(frozen=True, slots=True)
class Contract:
    """Where to find the key, event time and value of a record, and the size/depth limits.

    ts_format: "iso" takes ISO-8601 strings with an offset (Z, +00:00, or any offset, which is
    converted to UTC); "epoch_ms" takes integer epoch milliseconds; "auto" takes either,
    by JSON type (string -> ISO, integer -> epoch ms).
    max_depth counts nested containers: a flat object has depth 1.
    """

    key_fields: tuple[str, ...] = ("device_id", "metric")
    ts_field: str = "ts"
    value_field: str = "value"
    ts_format: TsFormat = "auto"
    max_depth: int = 32
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    version_field: str = ""  # the field `when` selectors read; "" when none uses it
    versions: tuple[SchemaVersion, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.key_fields, tuple) or not self.key_fields:
            raise ValueError(
                f"key_fields: must be a non-empty tuple of field paths, got {self.key_fields!r}"
            )
        for path in self.key_fields:
            _check_path("key_fields", path)
        if len(set(self.key_fields)) != len(self.key_fields):
            raise ValueError(f"key_fields: duplicate field path in {self.key_fields!r}")
        _check_path("ts_field", self.ts_field)
        _check_path("value_field", self.value_field)
        if self.ts_format not in TS_FORMATS:
            raise ValueError(f"ts_format: must be one of {TS_FORMATS}, got {self.ts_format!r}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int):
            raise ValueError(f"max_depth: must be an int, got {self.max_depth!r}")
        paths = [*self.all_paths, *(p for v in self.versions for p, _ in v.fields)]
        deepest = max(len(split_path(p)) for p in paths)
        if self.max_depth < deepest:
            raise ValueError(
                f"max_depth: {self.max_depth} is below the depth of the field paths ({deepest})"
            )
        mrb = self.max_record_bytes
        if isinstance(mrb, bool) or not isinstance(mrb, int) or mrb <= 0:
            raise ValueError(f"max_record_bytes: must be a positive int, got {mrb!r}")
        _check_versions(self)

    @property
    def all_paths(self) -> tuple[str, ...]:
        return (*self.key_fields, self.ts_field, self.value_field)

    @property
    def is_flat(self) -> bool:
        """True when every path is a top-level field: the decoder's typed fast path applies."""
        paths = self.all_paths
        return all("." not in p for p in paths) and len(set(paths)) == len(paths)

    def single(self, version: SchemaVersion) -> Contract:
        """The single-schema contract that decodes a record of `version` the same way."""
        return Contract(key_fields=version.key_fields, ts_field=version.ts_field,
                        value_field=version.value_field, ts_format=version.ts_format,
                        max_depth=self.max_depth, max_record_bytes=self.max_record_bytes)


# --- versions: checks and the settings' JSON form ------------------------------------------


def _clash(paths: tuple[str, ...]) -> bool:
    """Two equal paths, or one inside another ("a" and "a.b" need a scalar and an object)."""
    return any(p == q or q.startswith(p + ".") for i, p in enumerate(paths)
               for j, q in enumerate(paths) if i != j)


def _check_version(v: SchemaVersion, version_field: str) -> None:
    where = f"version {v.name!r}"
    if not isinstance(v.name, str) or not VERSION_NAME.fullmatch(v.name):
        raise ValueError(f"version name {v.name!r}: must be 1-64 of A-Z a-z 0-9 _ . -, "
                         "starting with a letter or digit")
    if not isinstance(v.key_fields, tuple) or not v.key_fields:
        raise ValueError(f"{where}: key_fields must be one or more field paths")
    for name, path in [*(("key_fields", k) for k in v.key_fields), ("ts_field", v.ts_field),
                       ("value_field", v.value_field)]:
        _check_path(f"{where}: {name}", path)
    if _clash(v.required):
        raise ValueError(f"{where}: key_fields, ts_field and value_field must be distinct "
                         "and none inside another")
    if v.ts_format not in TS_FORMATS:
        raise ValueError(f"{where}: ts_format must be one of {TS_FORMATS}, got {v.ts_format!r}")
    for w in v.when:
        if isinstance(w, bool) or not isinstance(w, str | int):
            raise ValueError(f"{where}: when values must be strings or integers, got {w!r}")
    if v.when and not version_field:
        raise ValueError(f"{where}: 'when' needs the contract's version_field")
    if v.present:
        _check_path(f"{where}: present", v.present)
    _check_fields(v, where)


def _check_fields(v: SchemaVersion, where: str) -> None:
    declared = dict(v.fields)
    if len(declared) != len(v.fields):
        raise ValueError(f"{where}: fields declares a path twice")
    for path, kind in v.fields:
        _check_path(f"{where}: fields", path)
        if kind not in JSON_TYPES:
            raise ValueError(f"{where}: field {path!r} has type {kind!r}, not one of "
                             f"{', '.join(JSON_TYPES)}")
    if _clash(tuple(declared)):
        raise ValueError(f"{where}: fields must not declare a path inside another")
    for path, accepted in v.required_types().items():
        said = declared.get(path)
        if said is not None and said not in accepted:
            raise ValueError(f"{where}: field {path!r} is declared {said}, but decode takes "
                             f"it only as {' or '.join(accepted)} (key: string, value: number, "
                             "ts: as ts_format says)")


def _check_versions(c: Contract) -> None:
    if not isinstance(c.versions, tuple):
        raise ValueError(f"versions: must be a tuple of SchemaVersion, got {c.versions!r}")
    if not isinstance(c.version_field, str):
        raise ValueError(f"version_field: must be a string, got {c.version_field!r}")
    if c.version_field:
        _check_path("version_field", c.version_field)
    if c.version_field and not c.versions:
        raise ValueError("version_field: is set, but no versions are declared")
    names = [v.name for v in c.versions]
    if len(set(names)) != len(names):
        raise ValueError(f"versions: names must be unique, got {names}")
    for i, v in enumerate(c.versions):
        _check_version(v, c.version_field)
        if v.catch_all and i != len(c.versions) - 1:
            raise ValueError(f"version {v.name!r}: has no selector (when, present), so it "
                             "matches every record and must be the last version")


VERSION_KEYS = frozenset({"name", "when", "present", "key_fields", "ts_field", "value_field",
                          "ts_format", "fields"})


def parse_versions(text: str, base: Contract, version_field: str) -> tuple[SchemaVersion, ...]:
    """The settings' JSON form (an array of objects) -> versions, with the base contract's
    paths and ts_format where a version leaves them out (version_field: the contract's).
    A declared ts type narrows an "auto" ts_format ("string" -> iso, "integer" -> epoch_ms).
    Raises ValueError naming the version and the key; "" is no versions."""
    if not text.strip():
        return ()
    try:
        items = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError("must be a JSON array of objects, one per version")
    return tuple(_one_version(i, item, base, version_field) for i, item in enumerate(items))


def _one_version(i: int, item: dict[str, Any], base: Contract,
                 version_field: str) -> SchemaVersion:
    where = f"versions[{i}]" + (f" {item['name']!r}" if isinstance(item.get("name"), str) else "")
    unknown = sorted(set(item) - VERSION_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(VERSION_KEYS))})")
    if not isinstance(item.get("name"), str):
        raise ValueError(f"{where}: needs a name (a string)")
    when = item.get("when", [])
    when = when if isinstance(when, list) else [when]
    keys = item.get("key_fields", list(base.key_fields))
    fields = item.get("fields", {})
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{where}: key_fields must be an array of field paths")
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: fields must be an object of path -> JSON type")
    for key in ("present", "ts_field", "value_field", "ts_format"):
        if key in item and not isinstance(item[key], str):
            raise ValueError(f"{where}: {key} must be a string, got {item[key]!r}")
    v = SchemaVersion(
        name=item["name"], key_fields=tuple(keys), ts_field=item.get("ts_field", base.ts_field),
        value_field=item.get("value_field", base.value_field),
        ts_format=item.get("ts_format", base.ts_format), when=tuple(when),
        present=item.get("present", ""), fields=tuple(fields.items()),
    )
    said = fields.get(v.ts_field)
    narrowed = {"string": "iso", "integer": "epoch_ms"}.get(said) if isinstance(said, str) else None
    if v.ts_format == "auto" and narrowed:
        v = replace(v, ts_format=narrowed)  # type: ignore[arg-type]
    try:
        _check_version(v, version_field)
    except ValueError as e:
        raise ValueError(f"{where}: {str(e).removeprefix(f'version {v.name!r}: ')}") from None
    return v
