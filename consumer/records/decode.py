"""Decode raw Kinesis records into Events, or explain why not. Pure, I/O free, never raises.

Shape: a typed msgspec fast path for flat contracts (every path a top-level field), and a
per-record classifier that re-parses with the stdlib and names the first problem. The fast
path only accepts what the classifier would accept with the same result; anything it is
unsure of goes to the classifier, which is authoritative. decode_columns is a third
path, for WindowEngine.process_records: a batch's clean records come out as columns (keys,
times, values) with few Python steps per record, its poison through decode_batch; a batch
it cannot vouch for comes out as None, for decode_batch to handle. decode_fields is its
all-or-nothing sibling for the transforms.

Check order (first failure wins), with stage / reason:
  decode / too_large      record bigger than Contract.max_record_bytes
  decode / kpl_checksum   starts with the KPL magic F3 89 9A C2: KCL passed through an
                          aggregate whose MD5 or protobuf was bad, unchanged
  decode / invalid_utf8   bytes are not UTF-8
  decode / invalid_json   not one JSON text (NaN/Infinity literals are not JSON)
  decode / too_deep       more nested containers than Contract.max_depth
  decode / not_an_object  top level is not a JSON object
  contract / missing_field, wrong_type, empty_field, invalid_utf8 (lone surrogate in a
             key), non_finite, bad_timestamp — the message names the field path.

Schema versions (Contract.versions, see contract.py): each record is decoded with the
single contract of its version, with the same checks; a record of no declared version is
contract / unknown_version, and a wrong type on a required field is contract / type_change,
its message naming the field, the version, the expected type and the type seen. Drift
(unknown fields, type changes) comes out as data, from schema_drift (versions.py).
Versioned contracts take the per-record path: the typed fast paths are for one schema.

Timestamps (see parse_timestamp): ISO-8601 strings must carry an offset; "Z", "+00:00"
and "-00:00" are UTC, any other offset is CONVERTED to UTC (lossless, unambiguous);
strings without an offset are rejected (ambiguous). Fractional seconds are truncated to
milliseconds. Epoch values must be JSON integers of milliseconds. Both must fall within
years 0001..9999.
"""

from __future__ import annotations

import calendar
import gc
import json
import math
import re
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import compress, repeat
from operator import add, attrgetter, is_not, itemgetter
from typing import Annotated, Any, NamedTuple, cast

import msgspec
import orjson

from consumer.records.contract import Contract, SchemaVersion, split_path
from consumer.records.model import Event, RawRecord, Rejected
from consumer.records.versions import (
    Drift,
    VersionRule,
    observe,
    select,
    type_change_message,
    unknown_version_message,
)

KPL_MAGIC = b"\xf3\x89\x9a\xc2"
MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class TimestampError(ValueError):
    """A timestamp that cannot be used; `reason` is "wrong_type" or "bad_timestamp"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- timestamps -------------------------------------------------------------------------

_HEAD = re.compile(r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})", re.ASCII)
_TAIL = re.compile(r"(?::(\d{2})(?:[.,](\d{1,9}))?)?(?:([Zz])|([+-])(\d{2}):?(\d{2}))", re.ASCII)
# "YYYY-MM-DDTHH:MM" -> epoch ms of that minute. A stream's timestamps share few minutes,
# so this turns most of ISO parsing into one dict hit (PEER-BENCH: ~0.36 us/record saved).
_MINUTES: dict[str, int] = {}
_MINUTES_CAP = 65_536


def _minute_ms(head: str) -> int:
    base = _MINUTES.get(head)
    if base is not None:
        return base
    m = _HEAD.fullmatch(head)
    if m is None:
        raise TimestampError("bad_timestamp", "not an ISO-8601 date-time")
    y, mo, d, h, mi = map(int, m.groups())
    try:
        dt = datetime(y, mo, d, h, mi, tzinfo=UTC)
    except ValueError as e:
        raise TimestampError("bad_timestamp", f"invalid date-time: {e}") from None
    base = int(dt.timestamp()) * 1000
    if len(_MINUTES) >= _MINUTES_CAP:
        _MINUTES.clear()  # bound the cache; it refills with the current minutes
    _MINUTES[head] = base
    return base


# "YYYY-MM-DDTHH:MM:SS" -> epoch ms, filled by the general parser for the common
# "...SS.fffZ" shape; with _MS3 the hot path is two dict hits and no int() parsing.
_SECONDS: dict[str, int] = {}
_MS3: dict[str, int] = {f"{i:03d}": i for i in range(1000)}


def _iso_ms(s: str) -> int:
    if len(s) == 24 and s[19] == "." and s[23] in "Zz":
        base = _SECONDS.get(s[:19])
        frac = _MS3.get(s[20:23])
        if base is not None and frac is not None:
            return base + frac
    return _iso_general(s)


def _iso_general(s: str) -> int:
    base = _minute_ms(s[:16])
    m = _TAIL.fullmatch(s, 16)
    if m is None:
        raise TimestampError("bad_timestamp", "not an ISO-8601 date-time with a UTC offset")
    sec, frac, _z, sign, oh, om = m.groups()
    ms = base
    if sec is not None:
        if int(sec) > 59:
            raise TimestampError("bad_timestamp", "seconds out of range")
        ms += int(sec) * 1000
        if len(s) == 24 and frac is not None and len(frac) == 3 and sign is None:
            if len(_SECONDS) >= _MINUTES_CAP:
                _SECONDS.clear()
            _SECONDS[s[:19]] = ms
        if frac is not None:
            ms += int((frac + "00")[:3])
    if sign is not None:
        if int(oh) > 23 or int(om) > 59:
            raise TimestampError("bad_timestamp", "UTC offset out of range")
        offset = (int(oh) * 60 + int(om)) * 60_000
        ms -= offset if sign == "+" else -offset
    return ms


def _check_range(ms: int) -> int:
    if MIN_MS <= ms <= MAX_MS:
        return ms
    raise TimestampError("bad_timestamp", f"{ms} ms is outside years 0001..9999")


def parse_timestamp(value: object, fmt: str = "auto") -> int:
    """Event time in epoch milliseconds UTC, from an ISO-8601 string or epoch-ms integer.

    fmt: "auto" (by type), "iso", or "epoch_ms". Raises TimestampError (a ValueError) with
    reason "wrong_type" for a JSON type the format does not take, else "bad_timestamp".
    """
    if type(value) is int:
        if fmt == "iso":
            raise TimestampError("wrong_type", "expected an ISO-8601 string, got an integer")
        return _check_range(value)
    if type(value) is str:
        if fmt == "epoch_ms":
            raise TimestampError("wrong_type", "expected integer epoch milliseconds, got a string")
        return _check_range(_iso_ms(value))
    want = {"iso": "an ISO-8601 string", "epoch_ms": "integer epoch milliseconds"}.get(
        fmt, "an ISO-8601 string or integer epoch milliseconds"
    )
    raise TimestampError("wrong_type", f"expected {want}, got {_json_type(value)}")


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)


# --- the authoritative per-record classifier ------------------------------------------


class _Reject(Exception):
    """Internal: carries (stage, reason, message) out of the field extraction; `field` is the
    path a wrong_type names (versioned decode turns that into a type_change)."""

    def __init__(self, stage: str, reason: str, message: str, field: str = "") -> None:
        super().__init__(message)
        self.stage, self.reason, self.message, self.field = stage, reason, message, field


class _Plan:
    """A contract compiled for the hot path (paths split, fast decoder built)."""

    def __init__(self, contract: Contract) -> None:
        self.contract = contract
        self.key_paths = [(p, split_path(p)) for p in contract.key_fields]
        self.ts_path = (contract.ts_field, split_path(contract.ts_field))
        self.value_path = (contract.value_field, split_path(contract.value_field))
        self.decoder: msgspec.json.Decoder[Any] | None = None
        self.keys: Callable[[Any], tuple[str, ...]] | None = None
        self.key_cols: list[Callable[[Any], str]] = []
        self.field_names: tuple[str, ...] = ()  # the fast path's, in column order
        # Versioned: a record's version decides its paths, so every record is looked at.
        self.versions = [_VersionPlan(contract, v) for v in contract.versions]
        self.version_segs = split_path(contract.version_field) if contract.version_field else ()
        if contract.is_flat and not self.versions:
            self._build_fast(contract)

    def _build_fast(self, c: Contract) -> None:
        ts_type: Any = {"iso": str, "epoch_ms": int}.get(c.ts_format, int | str)
        fields: list[tuple[str, Any]] = [(f"k{i}", str) for i in range(len(c.key_fields))]
        fields += [("v", float), ("t", ts_type)]
        rename = {f"k{i}": p for i, p in enumerate(c.key_fields)}
        rename |= {"v": c.value_field, "t": c.ts_field}
        # gc=False: the Struct is dropped right after reading; no need to track it.
        struct = msgspec.defstruct("FlatRecord", fields, rename=rename, gc=False)
        self.decoder = msgspec.json.Decoder(struct)
        # Exactly the contract's fields, all scalars: a record it accepts has depth 1 and
        # every string in it was UTF-8-validated, so the per-record scans can be skipped.
        exact = msgspec.defstruct(
            "ExactRecord", fields, rename=rename, gc=False, forbid_unknown_fields=True
        )
        self.exact: msgspec.json.Decoder[Any] = msgspec.json.Decoder(exact)
        # For decode_columns: the exact shape, with the empty-key and epoch range checks
        # done in C too.
        nonempty: list[tuple[str, Any]] = [
            (f"k{i}", Annotated[str, msgspec.Meta(min_length=1)]) for i in range(len(c.key_fields))
        ]
        epoch: Any = Annotated[int, msgspec.Meta(ge=MIN_MS, le=MAX_MS)]
        col_ts: Any = {"iso": str, "epoch_ms": epoch}.get(c.ts_format, epoch | str)
        columnar = msgspec.defstruct(
            "ColumnRecord", [*nonempty, ("v", float), ("t", col_ts)], rename=rename, gc=False,
            forbid_unknown_fields=True,
        )  # fmt: skip
        self.columns: msgspec.json.Decoder[Any] = msgspec.json.Decoder(columnar)
        # The same with other fields skipped, their UTF-8 and depth unchecked: decode_columns
        # checks those over the batch.
        lenient = msgspec.defstruct(
            "LenientColumnRecord", [*nonempty, ("v", float), ("t", col_ts)], rename=rename,
            gc=False,
        )  # fmt: skip
        self.lenient_columns: msgspec.json.Decoder[Any] = msgspec.json.Decoder(lenient)
        # For decode_fields: the same, keeping a JSON integer value an int (as orjson does).
        raw_numbers = msgspec.defstruct(
            "FieldsRecord", [*nonempty, ("v", int | float), ("t", col_ts)], rename=rename,
            gc=False, forbid_unknown_fields=True,
        )  # fmt: skip
        self.fields: msgspec.json.Decoder[Any] = msgspec.json.Decoder(raw_numbers)
        self.field_names = (*c.key_fields, c.value_field, c.ts_field)
        names = [f"k{i}" for i in range(len(c.key_fields))]
        self.key_cols = [attrgetter(n) for n in names]
        if len(names) == 1:
            one = attrgetter(names[0])
            self.keys = lambda s: (one(s),)
        else:
            self.keys = attrgetter(*names)


class _VersionPlan(VersionRule):
    """A schema version: its selector and drift checks, and its single contract's plan."""

    def __init__(self, contract: Contract, version: SchemaVersion) -> None:
        super().__init__(version, contract.version_field)
        self.plan = _plan(contract.single(version))


@lru_cache(maxsize=64)
def _plan(contract: Contract) -> _Plan:
    return _Plan(contract)


def _depth_exceeds(obj: object, limit: int) -> bool:
    """True if obj nests more than `limit` containers (iterative: no recursion limit)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, dict | list))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, dict | list))
    return False


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse(data: bytes, limit: int) -> object:
    """Strict parse for the classifier: raises _Reject with the decode-stage reason."""
    if data[:4] == KPL_MAGIC:
        raise _Reject(
            "decode", "kpl_checksum", "KPL aggregate passed through undeaggregated (bad checksum)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Reject("decode", "invalid_utf8", f"not UTF-8 at byte {e.start}") from None
    try:
        obj = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise _Reject("decode", "too_deep", f"nesting deeper than {limit}") from None
    except ValueError as e:
        raise _Reject("decode", "invalid_json", f"invalid JSON: {e}") from None
    if (text.count("{") + text.count("[") > limit) and _depth_exceeds(obj, limit):
        raise _Reject("decode", "too_deep", f"nesting deeper than {limit}")
    if not isinstance(obj, dict):
        raise _Reject("decode", "not_an_object", f"top level is {_json_type(obj)}, not an object")
    return obj


def _lookup(obj: dict[str, Any], path: str, segs: tuple[str, ...]) -> object:
    cur: object = obj
    for i, seg in enumerate(segs):
        if not isinstance(cur, dict):
            parent = ".".join(segs[:i])
            msg = f"field {path!r}: {parent!r} is not an object"
            raise _Reject("contract", "missing_field", msg)
        if seg not in cur:
            raise _Reject("contract", "missing_field", f"field {path!r} is missing")
        cur = cur[seg]
    return cur


def _extract(obj: dict[str, Any], rec: RawRecord, plan: _Plan) -> Event:
    key: list[str] = []
    for path, segs in plan.key_paths:
        k = _lookup(obj, path, segs)
        if not isinstance(k, str):
            msg = f"field {path!r} must be a string, got {_json_type(k)}"
            raise _Reject("contract", "wrong_type", msg, path)
        if not k:
            raise _Reject("contract", "empty_field", f"field {path!r} is empty")
        try:
            k.encode("utf-8")
        except UnicodeEncodeError:
            msg = f"field {path!r} has a lone surrogate escape"
            raise _Reject("contract", "invalid_utf8", msg) from None
        key.append(k)
    vpath, vsegs = plan.value_path
    v = _lookup(obj, vpath, vsegs)
    if isinstance(v, bool) or not isinstance(v, int | float):
        msg = f"field {vpath!r} must be a number, got {_json_type(v)}"
        raise _Reject("contract", "wrong_type", msg, vpath)
    try:
        value = float(v)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise _Reject("contract", "non_finite", f"field {vpath!r} is not a finite number")
    tpath, tsegs = plan.ts_path
    t = _lookup(obj, tpath, tsegs)
    try:
        ts = parse_timestamp(t, plan.contract.ts_format)
    except TimestampError as e:
        raise _Reject("contract", e.reason, f"field {tpath!r}: {e}", tpath) from None
    return Event(tuple(key), ts, value, rec)


def _classify(rec: RawRecord, plan: _Plan) -> Event | Rejected:
    """The slow, authoritative path: one record to an Event or a Rejected with a reason."""
    c = plan.contract
    try:
        data = rec.data
        if len(data) > c.max_record_bytes:
            msg = f"record is {len(data)} bytes, limit {c.max_record_bytes}"
            raise _Reject("decode", "too_large", msg)
        obj = _parse(data, c.max_depth)
        assert isinstance(obj, dict)
        return _extract(obj, rec, plan)
    except _Reject as r:
        return Rejected(rec, r.stage, r.reason, r.message)
    except Exception as e:  # the decoder must never raise on input
        return Rejected(rec, "decode", "internal", f"{type(e).__name__}: {e}")


# --- fast paths -----------------------------------------------------------------------


def _decode_fast(
    records: Sequence[RawRecord], plan: _Plan, events: list[Event], rejected: list[Rejected]
) -> None:
    assert plan.decoder is not None and plan.keys is not None
    decode, keys, c = plan.decoder.decode, plan.keys, plan.contract
    max_bytes, max_depth = c.max_record_bytes, c.max_depth
    iso_ok = c.ts_format != "epoch_ms"
    append = events.append
    seconds, ms3 = _SECONDS, _MS3
    exact, exact_ok = plan.exact.decode, True
    for rec in records:
        data = rec.data
        try:
            s = None
            if exact_ok:
                try:
                    s = exact(data)
                except msgspec.ValidationError:
                    exact_ok = False  # extra fields: the rest of this batch goes lenient
            if s is None:
                if not data.isascii():
                    data.decode()  # msgspec does not validate UTF-8 inside skipped fields
                s = decode(data)
                # One pass counting "{" and "[" (translate deletes them) bounds the depth.
                if len(data) - len(data.translate(None, b"{[")) > max_depth:
                    raise ValueError  # let the classifier measure precisely
            if len(data) > max_bytes:
                raise ValueError
            key = keys(s)
            v = s.v
            t = s.t
            if "" in key or v - v != 0.0:  # empty key, or inf/nan (inf - inf is nan)
                raise ValueError
            if type(t) is int:
                if not MIN_MS <= t <= MAX_MS:
                    raise ValueError
            elif iso_ok:
                # Inlined _iso_ms fast path (a call costs as much as the lookups).
                base = seconds.get(t[:19]) if len(t) == 24 and t[19] == "." else None
                frac = ms3.get(t[20:23])
                if base is not None and frac is not None and t[23] in "Zz":
                    t = base + frac
                else:
                    t = _iso_general(t)
                    if not MIN_MS <= t <= MAX_MS:
                        raise ValueError
            append(Event(key, t, v, rec))
        except Exception:  # any doubt: the authoritative path decides
            out = _classify(rec, plan)
            if isinstance(out, Event):
                append(out)
            else:
                rejected.append(out)


def _decode_general(
    records: Sequence[RawRecord], plan: _Plan, events: list[Event], rejected: list[Rejected]
) -> None:
    c = plan.contract
    for rec in records:
        data = rec.data
        out: Event | Rejected
        try:
            if len(data) > c.max_record_bytes:
                raise ValueError
            obj = orjson.loads(data)
            if not isinstance(obj, dict) or (
                data.count(b"{") + data.count(b"[") > c.max_depth
                and _depth_exceeds(obj, c.max_depth)
            ):
                raise ValueError
            out = _extract(obj, rec, plan)
        except Exception:  # the classifier explains it
            out = _classify(rec, plan)
        if isinstance(out, Event):
            events.append(out)
        else:
            rejected.append(out)


# --- schema versions ---------------------------------------------------------------------


def _extract_versioned(obj: dict[str, Any], rec: RawRecord, plan: _Plan) -> Event:
    """_extract with the record's version; a wrong type there is a type_change."""
    c = plan.contract
    vp = select(obj, plan.versions, plan.version_segs)
    if vp is None:
        msg = unknown_version_message(obj, plan.versions, c.version_field)
        raise _Reject("contract", "unknown_version", msg)
    assert isinstance(vp, _VersionPlan)
    try:
        return _extract(obj, rec, vp.plan)
    except _Reject as r:
        if r.reason != "wrong_type":
            raise
        raise _Reject("contract", "type_change", type_change_message(obj, vp, r.field),
                      r.field) from None


def _classify_versioned(rec: RawRecord, plan: _Plan) -> Event | Rejected:
    """_classify for a versioned contract: decode-stage checks, then the record's version."""
    c = plan.contract
    try:
        if len(rec.data) > c.max_record_bytes:
            msg = f"record is {len(rec.data)} bytes, limit {c.max_record_bytes}"
            raise _Reject("decode", "too_large", msg)
        obj = _parse(rec.data, c.max_depth)
        assert isinstance(obj, dict)
        return _extract_versioned(obj, rec, plan)
    except _Reject as r:
        return Rejected(rec, r.stage, r.reason, r.message)
    except Exception as e:  # the decoder must never raise on input
        return Rejected(rec, "decode", "internal", f"{type(e).__name__}: {e}")


def _parsed(data: bytes, c: Contract) -> dict[str, Any]:
    """orjson's parse, if decode's checks pass on it; raises otherwise (as _decode_general)."""
    if len(data) > c.max_record_bytes:
        raise ValueError
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or (
        data.count(b"{") + data.count(b"[") > c.max_depth and _depth_exceeds(obj, c.max_depth)
    ):
        raise ValueError
    return obj


def _decode_versioned(
    records: Sequence[RawRecord], plan: _Plan, events: list[Event], rejected: list[Rejected]
) -> None:
    c = plan.contract
    for rec in records:
        out: Event | Rejected
        try:
            out = _extract_versioned(_parsed(rec.data, c), rec, plan)
        except Exception:  # the classifier explains it
            out = _classify_versioned(rec, plan)
        if isinstance(out, Event):
            events.append(out)
        else:
            rejected.append(out)


def schema_drift(records: Sequence[RawRecord], contract: Contract) -> Counter[Drift]:
    """How many records drift from their schema version, by (field path, kind): see
    consumer/records/versions.py. Empty without versions (at no cost). Counted over the
    records decode parses as JSON objects of a declared version, whether it then accepts
    them or not (a type change on a required field is both quarantined and counted)."""
    if not contract.versions:
        return Counter()
    plan = _plan(contract)
    found: list[Drift] = []
    for rec in records:
        obj = _object(rec.data, contract)
        vp = None if obj is None else select(obj, plan.versions, plan.version_segs)
        if vp is not None:
            assert obj is not None
            found.extend(observe(obj, vp))
    return Counter(found)


def _object(data: bytes, c: Contract) -> dict[str, Any] | None:
    """The record as decode parses it, or None where decode quarantines it first."""
    try:
        return _parsed(data, c)
    except Exception:  # as decode: the stdlib parser decides
        try:
            if len(data) > c.max_record_bytes:
                return None
            obj = _parse(data, c.max_depth)
        except _Reject:
            return None
        assert isinstance(obj, dict)
        return obj


# --- batch entry point ----------------------------------------------------------------


def decode_batch(
    records: Sequence[RawRecord], contract: Contract
) -> tuple[list[Event], list[Rejected]]:
    """Split a batch into Events and Rejected, each in input order. Never raises on input.

    Cyclic GC is off for the batch (restored after): a batch allocates many short-lived
    objects and collections triggered mid-batch were the largest cost in PEER-BENCH.
    """
    plan = _plan(contract)
    events: list[Event] = []
    rejected: list[Rejected] = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if plan.versions:
            _decode_versioned(records, plan, events, rejected)
        elif plan.decoder is not None:
            _decode_fast(records, plan, events, rejected)
        else:
            _decode_general(records, plan, events, rejected)
    finally:
        if was_enabled:
            gc.enable()
    return events, rejected


# --- columnar fast paths ------------------------------------------------------------------

_DATA = attrgetter("data")
_V = attrgetter("v")
_T = attrgetter("t")
_HEAD19 = itemgetter(slice(None, 19))
_TAIL19 = itemgetter(slice(19, None))
# ".fffZ" -> fff: with _SECONDS, the common ISO shape is two dict hits, mapped in C.
_TAILS: dict[str, int] = {f".{i:03d}{z}": i for i in range(1000) for z in "Zz"}

Columns = tuple[list[tuple[str, ...]], list[int], list[float]]


class ColumnBatch(NamedTuple):
    """decode_batch's result with the Events as columns: Event(keys[i], ts[i], values[i],
    records[i]) in input order, and the Rejected in input order."""

    keys: list[tuple[str, ...]]
    ts: list[int]
    values: list[float]
    records: Sequence[RawRecord]
    rejected: list[Rejected]


def decode_columns(records: Sequence[RawRecord], contract: Contract) -> ColumnBatch | None:
    """decode_batch's result by columns, or None where this path cannot vouch for it.

    Every record is decoded by the plan's columnar shape (the contract's fields, checked in
    C; other fields skipped), and the size, UTF-8, depth and timestamp checks run over the
    batch at once. The records that fail go through decode_batch, which commonly rejects
    every one of them (poison). None when the contract is not flat, the batch is empty, a
    check needs the per-record path for a record the shape took (rare), or a record that
    failed here is an Event there after all: the caller then falls back to decode_batch.
    When not None, the result is exactly decode_batch's (property-tested). Per-record work
    is mostly in C (map over msgspec and operator callables). Call it with cyclic GC
    disabled.
    """
    plan = _plan(contract)
    if plan.decoder is None or not records:
        return None
    taken = _columnar_structs(records, plan)
    if taken is None:
        return None
    structs, at = taken
    if not structs:
        return None
    raw_ts = list(map(_T, structs))
    ts = _columns_ts(raw_ts, contract.ts_format)
    if ts is None:  # a timestamp _decode_fast would not take fails its record here too
        each = _each_ts(raw_ts)
        valid = list(map(is_not, each, repeat(None)))
        ok = list(compress(range(len(each)), valid))
        if not ok:
            return None
        at = list(compress(at, valid)) if at is not None else ok
        structs, ts = list(compress(structs, valid)), cast(list[int], list(compress(each, valid)))
    clean: Sequence[RawRecord] = records
    failed: list[RawRecord] = []
    if at is not None and len(at) < len(records):
        clean = list(map(records.__getitem__, at))
        left = [True] * len(records)
        _put(left, at, repeat(False))
        failed = list(compress(records, left))
    events, rejected = decode_batch(failed, contract) if failed else ([], [])
    if events:
        return None
    values: list[float] = list(map(_V, structs))  # finite: msgspec rejects out of range
    return ColumnBatch(_key_column(plan, structs), ts, values, clean, rejected)


def _columnar_structs(records: Sequence[RawRecord], plan: _Plan
                      ) -> tuple[list[Any], list[int] | None] | None:
    """The records the plan's columnar shape takes: their structs and indices, in order
    (None: every record); None if one of them is a record _decode_fast would doubt all the
    same (too large, bad UTF-8 in another field, too deep: rare, left to the caller's
    per-record path)."""
    c = plan.contract
    datas = list(map(_DATA, records))
    if max(map(len, datas)) > c.max_record_bytes:
        return None
    try:
        # Exactly the contract's fields, all scalars: UTF-8 is validated, depth is 1. One
        # map in C: the common case of a clean batch of that shape.
        return list(map(plan.columns.decode, datas)), None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # bad UTF-8; nesting
        pass
    structs, at = _decodable(plan.lenient_columns.decode, datas)
    taken = list(map(datas.__getitem__, at))
    # _decode_fast's checks of the other fields, over the batch in C first. msgspec skips
    # their UTF-8.
    if not all(map(bytes.isascii, taken)) and \
            not all(map(_utf8, (d for d in taken if not d.isascii()))):
        return None
    # "{" and "[" counted (translate deletes them) bound the depth; each record has one.
    joined = b"".join(taken)
    if len(joined) - len(joined.translate(None, b"{[")) > len(taken) and \
            max(len(d) - len(d.translate(None, b"{[")) for d in taken) > c.max_depth:
        return None
    return structs, at


def _decodable(decode: Callable[[bytes], Any], datas: list[bytes]) -> tuple[list[Any], list[int]]:
    """decode(d) of every d that decodes, and the indices of those d. The map resumes past
    each failure on the same iterator: list.extend keeps what it appended before the
    exception, so the loop runs once per failure, not once per record."""
    structs: list[Any] = []
    at: list[int] = []
    it, start = iter(datas), 0
    while start < len(datas):
        before = len(structs)
        try:
            structs.extend(map(decode, it))
        # RecursionError: msgspec's own nesting limit, met in a field it skips
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass
        else:
            at.extend(range(start, start + len(structs) - before))
            break
        took = len(structs) - before
        at.extend(range(start, start + took))
        start += took + 1  # past the record that failed
    return structs, at


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


FieldColumns = dict[str, list[Any]]
# orjson reads integers of 64 bits as ints, larger ones as floats.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def decode_fields(records: Sequence[RawRecord],
                  contract: Contract) -> tuple[Columns, FieldColumns] | None:
    """(keys, ts_ms, values) of every record, and the records' fields as orjson.loads reads
    them: name -> column, in the contract's order. All-or-nothing: None unless every record
    has exactly the contract's fields, all top-level (the transforms read fields by name),
    and would come out of decode_batch as an Event; None too for an integer value orjson
    would read as a float (beyond 64 bits). Call it with cyclic GC disabled."""
    plan = _plan(contract)
    if plan.decoder is None or len(set(plan.field_names)) != len(plan.field_names):
        return None  # versioned or nested; or one field read twice: no path of its own
    structs = _exact_structs(records, contract, plan)
    if structs is None:
        return None
    raw_v = values = list(map(_V, structs))
    if int in set(map(type, raw_v)):
        ints = [v for v in raw_v if type(v) is int]
        if min(ints) < _INT_MIN or max(ints) > _INT_MAX:
            return None
        values = list(map(float, raw_v))
    raw_t = list(map(_T, structs))
    ts = _columns_ts(raw_t, contract.ts_format)
    if ts is None:
        return None
    cols = [list(map(k, structs)) for k in plan.key_cols]
    fields = dict(zip(plan.field_names, [*cols, raw_v, raw_t], strict=True))
    return (list(zip(*cols, strict=True)), ts, values), fields


def _exact_structs(records: Sequence[RawRecord], contract: Contract,
                   plan: _Plan) -> list[Any] | None:
    """Every record decoded by the plan's exact shape for fields, or None (see above)."""
    if not records:
        return None
    datas = list(map(_DATA, records))
    if max(map(len, datas)) > contract.max_record_bytes:
        return None
    try:
        # Contract fields only, all scalars, keys non-empty: UTF-8 is validated, depth is 1.
        return list(map(plan.fields.decode, datas))
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # bad UTF-8; nesting
        return None


def _key_column(plan: _Plan, structs: list[Any]) -> list[tuple[str, ...]]:
    """The records' keys, each distinct key one object for the whole batch: a batch holds
    few keys, and the records' Events stay buffered until a flush, so the repeats would
    be held (about 140 B a record with the demo's keys) and freed cold. The window state's
    lookups also find an identical key faster than an equal one."""
    kcols = plan.key_cols
    keys: list[tuple[str, ...]]
    if len(kcols) == 1:
        keys = list(zip(map(kcols[0], structs)))
    else:
        assert plan.keys is not None
        keys = list(map(plan.keys, structs))
    first: dict[tuple[str, ...], tuple[str, ...]] = {}
    return list(map(first.setdefault, keys, keys))


def _columns_ts(raw: list[Any], fmt: str) -> list[int] | None:
    """Epoch ms of every raw timestamp (non-empty), or None if any needs the slow path."""
    # The decoder gave ints (epoch ms, in range) or strs (ISO), never bools or floats.
    if type(raw[0]) is int:
        if fmt != "epoch_ms":
            try:
                max(raw)
            except TypeError:
                return None  # mixed "auto" batch: the per-record path decides
        return raw
    if fmt != "iso" and not all(type(t) is str for t in raw):
        return None
    ms = _iso_each(raw)
    return None if None in ms else cast(list[int], ms)


def _each_ts(raw: list[Any]) -> list[int | None]:
    """Epoch ms of each raw timestamp as _decode_fast reads it, None where it would not take
    it: for a batch _columns_ts has declined (a bad timestamp among them, or epoch ms and ISO
    strings in one "auto" batch)."""
    is_str = list(map(isinstance, raw, repeat(str)))
    if all(is_str):
        return _iso_each(raw)
    out: list[int | None] = list(raw)  # epoch ms among them, in range (the decoder checked)
    # The ISO strings converted in one pass and put back in place, each step a C loop.
    _put(out, list(compress(range(len(raw)), is_str)), _iso_each(list(compress(raw, is_str))))
    return out


def _put(target: list[Any], at: list[int], values: Iterable[Any]) -> None:
    """target[at[i]] = values[i] for every i, the loop in C (a zero-length deque consumes)."""
    deque(map(target.__setitem__, at, values), maxlen=0)


# Stands in for a seconds-cache or fraction miss: a sum holding it is below _MISSED, where
# no valid epoch ms is, so the misses are found in C.
_MISS = -(1 << 80)
_MISSED = _MISS // 2


def _iso_each(raw: list[str]) -> list[int | None]:
    """Epoch ms of each ISO string, None where _decode_fast would not take it. Per string in
    Python only where the seconds cache cannot read it (an odd shape, a bad timestamp): a
    few bad timestamps leave the rest of the batch converted in C."""
    if not raw:
        return []
    swar = _iso_swar(raw)
    if swar is not None:
        return cast(list[int | None], swar)
    seconds = _SECONDS
    heads = list(map(_HEAD19, raw))
    # New seconds: cache them, and the minutes ahead (earliest first: fewer fills).
    for head in sorted(set(heads).difference(seconds)):
        if head not in seconds:  # an earlier head's fill may have covered it
            _fill_seconds(head)
    miss = repeat(_MISS)
    # Cached seconds are in range, and so is their sum with a fraction.
    out: list[int | None] = list(map(add, map(seconds.get, heads, miss),
                                     map(_TAILS.get, map(_TAIL19, raw), miss)))
    missed = list(compress(range(len(raw)), map(_MISSED.__gt__, cast(list[int], out))))
    if missed:
        _put(out, missed, [_iso_in_range(raw[i]) for i in missed])
    return out


def _iso_in_range(t: str) -> int | None:
    try:
        ms = _iso_general(t)
    except ValueError:
        return None
    return ms if MIN_MS <= ms <= MAX_MS else None




PREFILL_MINUTES = 5
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _fill_seconds(head: str) -> None:
    """Cache "YYYY-MM-DDTHH:MM:SS" -> epoch ms for every second of head's minute and of the
    next PREFILL_MINUTES - 1 minutes (event time moves on), so a stream misses the cache
    about once per PREFILL_MINUTES. A head that is not of that shape caches nothing."""
    try:
        base = _iso_general(head + ".000Z") - int(head[17:19]) * 1000  # validates head
    except ValueError:
        return
    if len(_SECONDS) + 60 * PREFILL_MINUTES > _MINUTES_CAP:
        _SECONDS.clear()
    for m in range(PREFILL_MINUTES):
        minute = base + m * 60_000
        if minute + 59_999 > MAX_MS:
            break
        at = _EPOCH + timedelta(milliseconds=minute)
        prefix = head[:16] if m == 0 else f"{at.year:04d}-{at:%m-%dT%H:%M}"
        for sec in range(60):
            _SECONDS[f"{prefix}:{sec:02d}"] = minute + sec * 1000


# --- ISO timestamps of a batch, vectorised ------------------------------------------------

_ISO_SEPARATORS = ((4, b"-"), (7, b"-"), (10, b"T"), (13, b":"), (16, b":"), (19, b"."), (23, b"Z"))
_ISO_DIGITS = (8, 9, 11, 12, 14, 15, 17, 18, 20, 21, 22)  # DD hh mm ss fff
_DIGIT_VALUES = bytes.maketrans(b"0123456789", bytes(range(10)))
_BELOW_24, _BELOW_60 = bytes(range(24)), bytes(range(60))
_LANES: dict[int, int] = {}  # n -> an int with 1 in each of n 64-bit lanes
_SWAR_OK = array("q").itemsize == 8


def _iso_swar(raw: list[Any]) -> list[int] | None:
    """Epoch ms of n strings "YYYY-MM-DDTHH:MM:SS.fffZ" of one month of a year >= 1970,
    exactly as _iso_general gives them, or None (then the caller goes per record).

    No Python step per record: the strings are joined, each digit position is cut out as a
    bytes column (extended slices), checked and range-checked with translate, and turned
    into one big int with a digit per lane ("SWAR"); a few multiplications of those ints
    add the fields up in every lane at once, and the 64-bit lanes are read back as ints.
    """
    n = len(raw)
    try:
        s = "".join(raw)
    except TypeError:
        return None  # an int in an "auto" batch
    if not _SWAR_OK or len(s) != 24 * n or min(map(len, raw)) != 24 or not s.isascii():
        return None
    b = s.encode("ascii")
    for pos, sep in _ISO_SEPARATORS:
        if b[pos::24] != sep * n:
            return None
    for pos in (0, 1, 2, 3, 5, 6):  # one year and month: their start is a constant
        if b[pos::24] != b[pos : pos + 1] * n:
            return None
    if not (b[:4].isdigit() and b[5:7].isdigit()):
        return None
    year, month = int(b[:4]), int(b[5:7])
    if year < 1970 or not 1 <= month <= 12:
        return None  # before 1970 a lane would go negative
    digits = b"".join([b[pos::24] for pos in _ISO_DIGITS])
    if digits.translate(None, b"0123456789"):
        return None
    d = digits.translate(_DIGIT_VALUES)  # digit values, column after column

    def column(i: int) -> int:
        return int.from_bytes(d[i * n : (i + 1) * n], "little")

    # Two-digit fields, one per byte lane (at most 99: no carry into the next lane).
    day, hour, minute, sec = (
        (column(i) * 10 + column(i + 1)).to_bytes(n, "little") for i in (0, 2, 4, 6)
    )
    days = calendar.monthrange(year, month)[1]
    if (
        day.translate(None, bytes(range(1, days + 1)))
        or hour.translate(None, _BELOW_24)
        or minute.translate(None, _BELOW_60)
        or sec.translate(None, _BELOW_60)
    ):
        return None

    def lanes16(col: bytes) -> int:
        buf = bytearray(2 * n)
        buf[0::2] = col
        return int.from_bytes(buf, "little")

    def lanes64(x: int) -> int:
        a = x.to_bytes(2 * n, "little")
        buf = bytearray(8 * n)
        buf[0::8], buf[1::8] = a[0::2], a[1::2]
        return int.from_bytes(buf, "little")

    # Minute of the month (<= 46079) and ms of the minute (<= 59999) fit 16-bit lanes.
    minutes = lanes16(day) * 1440 + lanes16(hour) * 60 + lanes16(minute)
    frac = d[8 * n :]
    ms = (
        lanes16(sec) * 1000
        + lanes16(frac[:n]) * 100
        + lanes16(frac[n : 2 * n]) * 10
        + lanes16(frac[2 * n :])
    )
    ones = _LANES.get(n)
    if ones is None:
        if len(_LANES) > 64:
            _LANES.clear()
        ones = _LANES[n] = int.from_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00" * n, "little")
    month_ms = (datetime(year, month, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
    # Every lane ends in [0, 2**63), so the exact sum's bytes are the lanes (a negative
    # constant, for day 1 of January 1970, borrows nothing across them in the end).
    total = lanes64(minutes) * 60_000 + lanes64(ms) + (month_ms - 86_400_000) * ones
    out = array("q")
    out.frombytes(total.to_bytes(8 * n, "little"))
    return out.tolist()
