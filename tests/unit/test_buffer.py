"""Pure tests of the sink buffer's batching decisions (no server needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.model import Position
from consumer.sinks.buffer import Batch, ByteBudget, FlushHints, FlushReason, SinkBuffer

# An operation script: ("add", size) | ("take",) | ("durable", index-into-in-flight) | ("tick", ms)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 400)),
        st.tuples(st.just("take"), st.just(0)),
        st.tuples(st.just("durable"), st.integers(0, 5)),
        st.tuples(st.just("tick"), st.integers(0, 5_000)),
    ),
    max_size=120,
)
hints_st = st.builds(
    FlushHints,
    max_records=st.integers(1, 20),
    max_bytes=st.integers(1, 2_000),
    max_age_ms=st.integers(0, 10_000),
)


def _pos(i: int) -> Position:
    return Position(1_000 + i // 3, i % 3)


@settings(max_examples=300, deadline=None)
@given(hints=hints_st, script=ops, limit=st.integers(1, 3_000))
def test_no_loss_no_duplicate_and_correct_frontier(
    hints: FlushHints, script: list[tuple[str, int]], limit: int
) -> None:
    budget = ByteBudget(limit)
    buf: SinkBuffer[int] = SinkBuffer("s", hints, budget)
    now = 0
    added: list[int] = []
    flying: list[Batch[int]] = []
    durable: list[int] = []
    for op, arg in script:
        if op == "add":
            if not budget.admits(arg):  # the caller's duty: flush instead of growing
                assert budget.used_bytes > 0
                continue
            i = len(added)
            buf.add(i, _pos(i), arg, now)
            added.append(i)
            assert budget.used_bytes <= max(limit, arg)
        elif op == "take":
            batch = buf.take_batch()
            if batch is not None:
                assert 1 <= len(batch.items) <= hints.max_records
                assert batch.size_bytes <= hints.max_bytes or len(batch.items) == 1
                assert list(batch.positions) == [_pos(i) for i in batch.items]
                flying.append(batch)
        elif op == "durable" and flying:
            batch = flying.pop(arg % len(flying))
            buf.mark_durable(batch)
            durable.extend(batch.items)
        elif op == "tick":
            now += arg
        not_durable = sorted(set(added) - set(durable))
        expected = _pos(not_durable[0]) if not_durable else None
        assert buf.min_pending_position() == expected
        assert buf.budget.used_bytes >= 0
    # Drain: everything added comes out exactly once, in order per batch.
    while (batch := buf.take_batch()) is not None:
        flying.append(batch)
    for batch in flying:
        buf.mark_durable(batch)
        durable.extend(batch.items)
    assert sorted(durable) == added
    assert len(durable) == len(set(durable))
    assert budget.used_bytes == 0
    assert buf.min_pending_position() is None


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=80), hints=hints_st)
def test_frontier_monotonic_when_batches_commit_in_order(
    sizes: list[int], hints: FlushHints
) -> None:
    buf: SinkBuffer[int] = SinkBuffer("s", hints, ByteBudget(10_000_000))
    last: Position | None = None
    for i, size in enumerate(sizes):
        buf.add(i, _pos(i), size, 0)
        if buf.should_flush(0) is not None:
            batch = buf.take_batch()
            assert batch is not None
            buf.mark_durable(batch)
        frontier = buf.min_pending_position()
        if frontier is not None:
            assert last is None or frontier >= last
            last = frontier


def test_frontier_with_out_of_order_positions() -> None:
    # Window results may carry an older position than items added before them.
    buf: SinkBuffer[str] = SinkBuffer("r", FlushHints(max_records=2), ByteBudget(100))
    buf.add("a", Position(10, 0), 1, 0)
    buf.add("b", Position(5, 0), 1, 0)
    buf.add("c", Position(20, 0), 1, 0)
    assert buf.min_pending_position() == Position(5, 0)
    batch = buf.take_batch()
    assert batch is not None and batch.items == ("a", "b")
    assert buf.min_pending_position() == Position(5, 0)  # in flight still holds it
    buf.mark_durable(batch)
    assert buf.min_pending_position() == Position(20, 0)


def test_flush_reasons() -> None:
    budget = ByteBudget(1_000)
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints(3, 100, 50), budget)
    assert buf.should_flush(10**9) is None  # empty never flushes
    buf.add(0, _pos(0), 10, now_ms=0)
    assert buf.should_flush(49) is None
    assert buf.should_flush(50) is FlushReason.AGE
    buf.add(1, _pos(1), 95, now_ms=0)
    assert buf.should_flush(0) is FlushReason.BYTES
    buf.add(2, _pos(2), 1, now_ms=0)
    assert buf.should_flush(0) is FlushReason.RECORDS


def test_shared_budget_makes_other_sinks_flush() -> None:
    budget = ByteBudget(100)
    a: SinkBuffer[int] = SinkBuffer("a", FlushHints(1000, 10_000, 10**9), budget)
    b: SinkBuffer[int] = SinkBuffer("b", FlushHints(1000, 10_000, 10**9), budget)
    a.add(0, _pos(0), 60, 0)
    assert b.should_flush(0) is None and budget.admits(40)
    assert not budget.admits(41)
    b.add(1, _pos(1), 40, 0)
    assert budget.over_budget()
    assert a.should_flush(0) is FlushReason.BUDGET
    assert b.should_flush(0) is FlushReason.BUDGET
    batch = a.take_batch()
    assert batch is not None
    assert budget.over_budget()  # in-flight bytes are still held
    a.mark_durable(batch)
    assert not budget.over_budget() and budget.used_bytes == 40


def test_oversized_item_is_admitted_into_empty_budget() -> None:
    budget = ByteBudget(10)
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints(max_bytes=5), budget)
    assert budget.admits(50)
    buf.add(0, _pos(0), 50, 0)
    assert not budget.admits(1)
    batch = buf.take_batch()
    assert batch is not None and batch.items == (0,)


def test_misuse_is_loud() -> None:
    with pytest.raises(ValueError):
        FlushHints(max_records=0)
    with pytest.raises(ValueError):
        ByteBudget(0)
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints(), ByteBudget(10))
    buf.add(0, _pos(0), 1, 0)
    batch = buf.take_batch()
    assert batch is not None
    buf.mark_durable(batch)
    with pytest.raises(KeyError):
        buf.mark_durable(batch)
