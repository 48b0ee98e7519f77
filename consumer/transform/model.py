"""The transform stage's values: a record as a dict of fields with its provenance, and what a
chain returns. Immutable containers; the field dicts are owned by whoever made them, and no
step changes a dict it was given (a step that changes a record returns a new dict)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from consumer.records.model import RawRecord, Rejected

STAGE = "transform"
ROUTE_FIELD = "_aggregations"  # the route step's output: the names of the aggregations


@dataclass(frozen=True, slots=True)
class TRecord:
    """One record inside the transform stage: its fields (a decoded JSON object, as changed
    by the steps so far) and the raw record it came from, unchanged, for provenance."""

    fields: Mapping[str, Any]
    record: RawRecord


@dataclass(frozen=True, slots=True)
class Reject:
    """A step's verdict that it cannot handle a record: a short reason class and a sentence.
    Plug-ins return it, in place of a record, for a record they refuse."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class ChainResult:
    """What a chain made of a batch: the records that came through (in input order), the
    rejected ones (in input order, stage "transform", reason "<step>:<class>"), and how many
    records each filter removed, by filter (step) name."""

    records: tuple[TRecord, ...]
    rejected: tuple[Rejected, ...]
    filtered: Mapping[str, int] = field(default_factory=dict)


def rejected(step: str, rec: RawRecord, why: Reject) -> Rejected:
    """The quarantine value for a record `step` refused: the raw record kept whole."""
    return Rejected(record=rec, stage=STAGE, reason=f"{step}:{why.reason}",
                    message=f"transform step {step!r}: {why.message}")
