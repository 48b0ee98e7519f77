"""consumer/transform/against.py: stored rows merged per window and key, and compared."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.sinks.rows import result_line, result_row
from consumer.transform.against import compare, merged, parse_url, prefixes
from consumer.windows.model import Aggregates, WindowResult

T0 = 1_794_999_600_000
values = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 3))
parts = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 130),
                           st.lists(values, min_size=1, max_size=4)),
                 min_size=1, max_size=12, unique_by=lambda p: (p[0], p[1]))


def result(key: str, window: int, vals: list[float], shard: str) -> WindowResult:
    start = T0 + window * 60_000
    return WindowResult("tumbling", start, start + 60_000, (key, "m"), shard,
                        Aggregates(len(vals), sum(vals), min(vals), max(vals), start, start),
                        True)


def stored_row(r: WindowResult) -> dict[str, Any]:
    """A row exactly as the S3 results objects hold it."""
    row: dict[str, Any] = orjson.loads(result_line(result_row(r)))
    return row


def computed(r: WindowResult, closed_by: str = "watermark") -> dict[str, Any]:
    return {"type": "result", **stored_row(r), "closed_by": closed_by}


@given(parts)
def test_the_same_results_are_equal_and_one_changed_is_the_one_reported(
        windows: list[tuple[str, int, list[float]]]) -> None:
    results = [result(k, w, v, "s1") for k, w, v in windows]
    stored, repeated = merged([stored_row(r) for r in results] * 2)  # a replay's copy too
    assert repeated == len(results)
    *diffs, summary = compare([computed(r) for r in results], stored)
    assert diffs == [] and summary["equal"] == len(results) and summary["equal_overall"]
    changed = results[0]
    bumped = result(changed.key[0], (changed.start_ms - T0) // 60_000,
                    [*windows[0][2], 1e7], "s1")
    *diffs, summary = compare([computed(bumped), *map(computed, results[1:])], stored)
    assert [(d["difference"], d["key"], d["window_start_ms"]) for d in diffs] == [
        ("different", list(changed.key), changed.start_ms)]
    assert diffs[0]["fields"]["count"] == {"input": changed.aggregates.count + 1,
                                           "stored": changed.aggregates.count}
    assert not summary["equal_overall"]


@given(parts, st.data())
def test_parts_from_two_shards_merge_to_the_whole(windows: list[tuple[str, int, list[float]]],
                                                  data: st.DataObject) -> None:
    whole = [result(k, w, v, "input") for k, w, v in windows]
    rows = []
    for k, w, v in windows:
        cut = data.draw(st.integers(0, len(v)))
        rows += [stored_row(result(k, w, part, shard))
                 for part, shard in ((v[:cut], "s1"), (v[cut:], "s2")) if part]
    *diffs, summary = compare([computed(r) for r in whole], merged(rows)[0])
    assert diffs == [] and summary["equal"] == len(whole)


def test_missing_extra_and_open() -> None:
    a, b, c = (result("a", 1, [1.0], "s"), result("b", 2, [2.0], "s"),
               result("c", 3, [3.0], "s"))
    late_open = result("a", 4, [4.0], "s")
    stored, _ = merged([stored_row(b), stored_row(c)])
    out = list(compare([computed(a), computed(b), computed(late_open, "end_of_input")],
                       stored))
    assert [(o["type"], o.get("difference"), o.get("key")) for o in out] == [
        ("difference", "missing", ["a", "m"]), ("open", "open", ["a", "m"]),
        ("difference", "extra", ["c", "m"]), ("comparison", None, None)]
    assert (out[-1]["missing"], out[-1]["extra"], out[-1]["open"], out[-1]["equal"]) == \
        (1, 1, 1, 1)
    # a stored window outside the run's windows is not "extra": the input does not cover it
    far, _ = merged([stored_row(b), stored_row(result("z", 9, [1.0], "s"))])
    assert list(compare([computed(b)], far))[-1]["extra"] == 0


def test_urls_and_listing_prefixes() -> None:
    assert parse_url("s3://bkt/p/results", "results/") == ("bkt", "p/results/")
    assert parse_url("s3://bkt", "results/") == ("bkt", "results/")
    with pytest.raises(ValueError, match="not an s3://bucket/prefix URL"):
        parse_url("/tmp/x", "results/")
    rows = [computed(result("a", 1, [1.0], "s")), computed(result("a", 70, [1.0], "s"))]
    assert prefixes("r/", rows, "shardId-1") == [
        "r/dt=2026-11-18/hour=11/shard=shardId-1/", "r/dt=2026-11-18/hour=12/shard=shardId-1/"]
    assert prefixes("r/", rows, None) == ["r/dt=2026-11-18/hour=11/", "r/dt=2026-11-18/hour=12/"]
