"""The record contract: where a record's key, event time and value live, and the limits.

A `Contract` is configuration, validated once at construction so the decoder's hot path can
trust it. Field paths are dotted ("payload.device"); a segment may not be empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
        deepest = max(len(split_path(p)) for p in self.all_paths)
        if self.max_depth < deepest:
            raise ValueError(
                f"max_depth: {self.max_depth} is below the depth of the field paths ({deepest})"
            )
        mrb = self.max_record_bytes
        if isinstance(mrb, bool) or not isinstance(mrb, int) or mrb <= 0:
            raise ValueError(f"max_record_bytes: must be a positive int, got {mrb!r}")

    @property
    def all_paths(self) -> tuple[str, ...]:
        return (*self.key_fields, self.ts_field, self.value_field)

    @property
    def is_flat(self) -> bool:
        """True when every path is a top-level field: the decoder's typed fast path applies."""
        paths = self.all_paths
        return all("." not in p for p in paths) and len(set(paths)) == len(paths)
