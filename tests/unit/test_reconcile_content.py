"""consumer/local/reconcile.py's content comparisons (pure): what the e2e reconciliation
relies on to call two sinks equal, so each difference it must see is shown to be seen."""

from __future__ import annotations

from consumer.local.reconcile import ResultContent, expected_results, result_differences


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
    got = expected_results(rows, late, 10_000, ("device_id", "metric"))
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
