"""Properties of the pure task-count recommendation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.scaling import ShardLoad, recommend

rates = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)
shard_loads = st.builds(ShardLoad, shard_id=st.text(min_size=1, max_size=8),
                        is_open=st.booleans(), records_per_s=rates, bytes_per_s=rates)
capacity = st.floats(min_value=1, max_value=1e5, allow_nan=False)
per_task = st.integers(min_value=1, max_value=64)
headroom = st.floats(min_value=0.05, max_value=1.0)


@given(st.lists(shard_loads, max_size=60), capacity, per_task, headroom)
def test_bounds(shards: list[ShardLoad], cap: float, k: int, h: float) -> None:
    rec = recommend(shards, records_per_task_per_s=cap, max_shards_per_task=k, headroom=h)
    open_shards = sum(s.is_open for s in shards)
    assert rec.open_shards == open_shards
    assert rec.tasks >= 1
    assert rec.tasks <= max(1, open_shards)
    assert rec.tasks >= math.ceil(open_shards / k)
    load = sum(s.records_per_s for s in shards)
    # Below the shard cap, the tasks cover the load at the planned utilisation.
    if rec.tasks < open_shards:
        assert rec.tasks * cap * h >= load * (1 - 1e-9)
    assert rec.reasoning[-1] == f"recommended tasks: {rec.tasks}"


@given(st.lists(shard_loads, min_size=1, max_size=40), capacity, per_task,
       st.floats(min_value=1.0, max_value=100.0))
def test_monotone_in_load(shards: list[ShardLoad], cap: float, k: int, factor: float) -> None:
    heavier = [ShardLoad(s.shard_id, s.is_open, s.records_per_s * factor, s.bytes_per_s)
               for s in shards]
    a = recommend(shards, records_per_task_per_s=cap, max_shards_per_task=k)
    b = recommend(heavier, records_per_task_per_s=cap, max_shards_per_task=k)
    assert b.tasks >= a.tasks


@given(st.lists(shard_loads, max_size=40), capacity, per_task)
def test_more_capacity_never_needs_more_tasks(shards: list[ShardLoad], cap: float,
                                              k: int) -> None:
    a = recommend(shards, records_per_task_per_s=cap, max_shards_per_task=k)
    b = recommend(shards, records_per_task_per_s=cap * 2, max_shards_per_task=k + 1)
    assert b.tasks <= a.tasks


@given(st.lists(shard_loads, max_size=40), capacity, per_task,
       st.floats(min_value=1, max_value=1e7))
def test_byte_limit_only_adds(shards: list[ShardLoad], cap: float, k: int,
                              bcap: float) -> None:
    a = recommend(shards, records_per_task_per_s=cap, max_shards_per_task=k)
    b = recommend(shards, records_per_task_per_s=cap, max_shards_per_task=k,
                  bytes_per_task_per_s=bcap)
    assert b.tasks >= a.tasks


def test_worked_example() -> None:
    shards = [ShardLoad(f"shardId-{i}", True, 700.0) for i in range(10)]
    shards.append(ShardLoad("shardId-parent", False, 0.0))
    rec = recommend(shards, records_per_task_per_s=1000, max_shards_per_task=4,
                    headroom=1.0)
    # leases need 3, load needs ceil(7000 / 1000) = 7
    assert (rec.tasks, rec.open_shards) == (7, 10)


def test_exact_multiple_does_not_round_up() -> None:
    shards = [ShardLoad("a", True, 0.1), ShardLoad("b", True, 0.2), ShardLoad("c", True, 0.0)]
    rec = recommend(shards, records_per_task_per_s=0.1, max_shards_per_task=4, headroom=1.0)
    assert rec.tasks == 3


def test_capped_at_open_shards_and_hot_shard_warned() -> None:
    rec = recommend([ShardLoad("hot", True, 50_000.0)], records_per_task_per_s=1000,
                    max_shards_per_task=1)
    assert rec.tasks == 1
    assert any("split it" in line for line in rec.reasoning)
    assert any("capped at 1" in line for line in rec.reasoning)


def test_no_shards_still_one_task() -> None:
    assert recommend([], records_per_task_per_s=1, max_shards_per_task=1).tasks == 1


@pytest.mark.parametrize("kwargs", [
    {"records_per_task_per_s": 0, "max_shards_per_task": 1},
    {"records_per_task_per_s": float("inf"), "max_shards_per_task": 1},
    {"records_per_task_per_s": 1, "max_shards_per_task": 0},
    {"records_per_task_per_s": 1, "max_shards_per_task": 1, "headroom": 0},
    {"records_per_task_per_s": 1, "max_shards_per_task": 1, "bytes_per_task_per_s": -1},
])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        recommend([], **kwargs)  # type: ignore[arg-type]


def test_bad_load() -> None:
    with pytest.raises(ValueError, match="shard x"):
        recommend([ShardLoad("x", True, float("nan"))], records_per_task_per_s=1,
                  max_shards_per_task=1)
