"""consumer/local/reconcile.py's content comparisons (pure): what the e2e reconciliation
relies on to call two sinks equal, so each difference it must see is shown to be seen."""

from __future__ import annotations

import json

import pytest

from consumer.local.reconcile import ResultContent, expected_results, result_differences
from consumer.records.contract import Contract, parse_versions

PLAIN = Contract()


def content(count: int = 2, total: float = 3.0, final: bool = True) -> ResultContent:
    return ResultContent("shardId-000000000000", 10_000, ("dev-1", "temperature"), count,
                         total, 1.0, 2.0, final)


def test_equal_sinks_have_no_differences() -> None:
    sinks = {s: {"r1": [content()], "r2": [content(3, 4.5)]} for s in ("s3", "rs", "os")}
    assert result_differences(sinks) == []


def test_missing_duplicated_and_different_results_are_each_reported() -> None:
    sinks = {
        "s3": {"r1": [content()], "r2": [content()]},
        "rs": {"r1": [content(), content()], "r2": [content()]},  # twice
        "os": {"r1": [content()], "r2": [content(2, 3.0, final=False)]},  # not final
        "extra": {"r1": [content()], "r2": [content()], "r3": [content()]},
    }
    problems = result_differences(sinks)
    assert any("r1: 2 copies in rs" in p for p in problems)
    assert any(p.startswith("r2: sinks disagree") for p in problems)
    assert sum("r3: 0 copies" in p for p in problems) == 3  # missing from three sinks


def test_expected_results_fold_the_archive_by_shard_window_and_key_without_late() -> None:
    def row(seq: int, shard: str, ts: int, value: float, device: str = "d") -> dict:
        return {"shard": shard, "sequence": str(100 + seq), "sub_sequence": 0,
                "event_ts_ms": ts,
                "payload": {"device_id": device, "metric": "m", "value": value, "seq": seq}}

    rows = [row(1, "s0", 10_500, 2.0), row(2, "s0", 19_999, -1.0), row(3, "s0", 20_000, 5.0),
            row(4, "s1", 10_001, 7.0), row(5, "s0", 10_002, 9.0, device="e"),
            row(6, "s0", 11_000, 100.0)]
    late = {("s0", "106", 0)}
    got = expected_results(rows, late, 10_000, PLAIN)
    assert got == {
        ("s0", 10_000, ("d", "m")): ResultContent("s0", 10_000, ("d", "m"), 2, 1.0, -1.0, 2.0,
                                                  True),
        ("s0", 20_000, ("d", "m")): ResultContent("s0", 20_000, ("d", "m"), 1, 5.0, 5.0, 5.0,
                                                  True),
        ("s1", 10_000, ("d", "m")): ResultContent("s1", 10_000, ("d", "m"), 1, 7.0, 7.0, 7.0,
                                                  True),
        ("s0", 10_000, ("e", "m")): ResultContent("s0", 10_000, ("e", "m"), 1, 9.0, 9.0, 9.0,
                                                  True),
    }


def versioned() -> Contract:
    base = Contract()
    text = json.dumps([
        {"name": "v1", "when": 1, "value_field": "temp"},
        {"name": "v2", "when": 2, "key_fields": ["sensor.id", "metric"], "ts_field": "time"},
    ])
    return Contract(version_field="schema_version",
                    versions=parse_versions(text, base, "schema_version"))


def test_expected_results_read_each_payload_at_its_versions_paths() -> None:
    """v1 carries the value in `temp`, v2 in `value` and its device in `sensor.id`: both
    count in the same window and key, as the decoder reads them."""
    rows = [
        {"shard": "s0", "sequence": "1", "sub_sequence": 0, "event_ts_ms": 10_100,
         "payload": {"schema_version": 1, "device_id": "d", "metric": "m", "ts": 10_100,
                     "temp": 4.0}},
        {"shard": "s0", "sequence": "2", "sub_sequence": 0, "event_ts_ms": 10_200,
         "payload": {"schema_version": 2, "sensor": {"id": "d"}, "metric": "m",
                     "time": 10_200, "value": 6.5}},
        {"shard": "s0", "sequence": "3", "sub_sequence": 0, "event_ts_ms": 10_300,
         "payload": {"schema_version": 1, "device_id": "d", "metric": "m", "ts": 10_300,
                     "temp": -1.0, "value": 1000.0}},  # v1: `value` is just another field
    ]
    got = expected_results(rows, set(), 10_000, versioned())
    assert got == {("s0", 10_000, ("d", "m")): ResultContent("s0", 10_000, ("d", "m"), 3, 9.5,
                                                             -1.0, 6.5, True)}
    with pytest.raises(ValueError, match="no declared version"):
        expected_results([{**rows[0], "payload": {**rows[0]["payload"], "schema_version": 3}}],
                         set(), 10_000, versioned())
