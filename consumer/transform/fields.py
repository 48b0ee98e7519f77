"""Dotted field paths over a record's fields (`payload.device`), read and written without
changing any dict that is passed in: a write copies the dicts along its path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING: Any = object()  # a path that is not there (a present null is None)


def split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def get(fields: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = fields
    for seg in path:
        if not isinstance(node, Mapping) or seg not in node:
            return MISSING
        node = node[seg]
    return node


class PathConflict(ValueError):
    """A write through a field that holds something other than an object."""


def put(fields: Mapping[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `fields` with `value` at `path`; missing objects on the way are created.
    Raises PathConflict rather than overwrite a non-object on the way (data would be lost)."""
    out = dict(fields)
    head, rest = path[0], path[1:]
    if not rest:
        out[head] = value
        return out
    child = out.get(head, MISSING)
    if child is MISSING:
        child = {}
    elif not isinstance(child, Mapping):
        raise PathConflict(f"field {head!r} holds {type(child).__name__} {child!r:.40}, "
                           f"not an object, so {'.'.join(path)!r} cannot be written")
    out[head] = put(child, rest, value)
    return out


def delete(fields: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    """A copy of `fields` without `path`, or `fields` itself when the path is not there."""
    head, rest = path[0], path[1:]
    if head not in fields:
        return fields
    if not rest:
        return {k: v for k, v in fields.items() if k != head}
    child = fields[head]
    if not isinstance(child, Mapping):
        return fields
    new_child = delete(child, rest)
    if new_child is child:
        return fields
    out = dict(fields)
    out[head] = new_child
    return out
