"""Pure tests of the sink buffer's batching decisions (no server needed)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.records.model import Position
from consumer.sinks.buffer import Batch, ByteBudget, FlushHints, FlushReason, SinkBuffer

# An operation script: ("add", size) | ("take",) | ("durable", index-into-taken) | ("tick", ms)
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
@given(hints=hints_st, script=ops, jumble=st.randoms(use_true_random=False))
def test_batches_cut_in_shard_order_lose_and_repeat_nothing(
    hints: FlushHints, script: list[tuple[str, int]], jumble: random.Random
) -> None:
    """Items are added in any order (rejects before late records of the same KCL batch);
    every batch holds the smallest pending positions, so it holds every pending item between
    its first and last position; nothing is lost or taken twice; bytes are freed when durable."""
    buf: SinkBuffer[int] = SinkBuffer("s", hints)
    now = 0
    pending: set[int] = set()
    taken: list[Batch[int]] = []
    seen: list[int] = []
    next_id = 0
    for op, arg in script:
        if op == "add":
            # ids of one "KCL batch" of 1-3 items, added in a jumbled order
            ids = list(range(next_id, next_id + 1 + arg % 3))
            next_id += len(ids)
            jumble.shuffle(ids)
            for i in ids:
                buf.add(i, _pos(i), arg, now)
                pending.add(i)
        elif op == "take":
            batch = buf.take_batch()
            if batch is None:
                assert not pending
                continue
            assert 1 <= len(batch.items) <= hints.max_records
            assert batch.size_bytes <= hints.max_bytes or len(batch.items) == 1
            assert list(batch.positions) == [_pos(i) for i in batch.items]
            assert list(batch.items) == sorted(pending)[: len(batch.items)]
            pending.difference_update(batch.items)
            taken.append(batch)
            seen += batch.items
        elif op == "durable" and taken:
            buf.mark_durable(taken.pop(arg % len(taken)))
        else:
            now += arg
    while (batch := buf.take_batch()) is not None:
        seen += batch.items
        taken.append(batch)
    for batch in taken:
        buf.mark_durable(batch)
    assert sorted(seen) == list(range(next_id)) and len(seen) == len(set(seen))
    assert len(buf) == 0


def test_flush_reasons() -> None:
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints(3, 100, 50))
    assert buf.should_flush(10**9) is None  # empty never flushes
    buf.add(0, _pos(0), 10, now_ms=0)
    assert buf.should_flush(49) is None
    assert buf.should_flush(50) is FlushReason.AGE
    buf.add(1, _pos(1), 95, now_ms=0)
    assert buf.should_flush(0) is FlushReason.BYTES
    buf.add(2, _pos(2), 1, now_ms=0)
    assert buf.should_flush(0) is FlushReason.RECORDS


def test_budget_charges_and_releases() -> None:
    budget = ByteBudget(100)
    budget.charge(60)
    assert not budget.over_budget()
    budget.charge(40)
    assert budget.over_budget()
    budget.release(100)
    assert not budget.over_budget() and budget.used_bytes == 0
    with pytest.raises(ValueError):
        budget.release(1)


def test_oversized_item_forms_a_batch_of_one() -> None:
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints(max_bytes=5))
    buf.add(0, _pos(0), 50, 0)
    buf.add(1, _pos(1), 1, 0)
    batch = buf.take_batch()
    assert batch is not None and batch.items == (0,)


def test_misuse_is_loud() -> None:
    with pytest.raises(ValueError):
        FlushHints(max_records=0)
    with pytest.raises(ValueError):
        ByteBudget(0)
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints())
    buf.add(0, _pos(0), 1, 0)
    batch = buf.take_batch()
    assert batch is not None
    buf.mark_durable(batch)
    with pytest.raises(KeyError):
        buf.mark_durable(batch)


@given(st.lists(st.integers(0, 50), max_size=60), st.integers(1, 10), st.integers(1, 120))
def test_take_batch_takes_what_the_hints_allow_in_shard_order(
        sizes: list[int], max_records: int, max_bytes: int) -> None:
    """Batches are the longest prefix (in shard order) within both hints, or one item when a
    lone item is over max_bytes; every item is taken once."""
    buf: SinkBuffer[int] = SinkBuffer("t", FlushHints(max_records, max_bytes, 0))
    buf.add_many(list(range(len(sizes))), [Position(len(sizes) - i, 0) for i in range(len(sizes))],
                 sizes, 0)
    expected = sorted(range(len(sizes)), key=lambda i: len(sizes) - i)
    taken: list[int] = []
    while (batch := buf.take_batch()) is not None:
        n = 0
        while (n < min(max_records, len(expected) - len(taken))
               and (n == 0 or sum(sizes[i] for i in expected[len(taken):len(taken) + n + 1])
                    <= max_bytes)):
            n += 1
        assert list(batch.items) == expected[len(taken):len(taken) + n]
        assert batch.size_bytes == sum(sizes[i] for i in batch.items)
        taken += batch.items
    assert taken == expected and buf.pending_bytes == 0


class PlainBuffer:
    """The reference: one (position, item, size) entry per item, sorted stably by position
    before a batch is cut (SinkBuffer as it was before it held columns)."""

    def __init__(self, hints: FlushHints) -> None:
        self.hints = hints
        self.pending: list[tuple[Position, int, int]] = []
        self.oldest_ms: int | None = None
        self.next_batch = 0

    def add_many(self, items: list[int], positions: list[Position], sizes: list[int],
                 now_ms: int) -> None:
        if items:
            self.pending += zip(positions, items, sizes, strict=True)
            self.oldest_ms = now_ms if self.oldest_ms is None else self.oldest_ms

    def should_flush(self, now_ms: int) -> FlushReason | None:
        if not self.pending:
            return None
        if len(self.pending) >= self.hints.max_records:
            return FlushReason.RECORDS
        if sum(e[2] for e in self.pending) >= self.hints.max_bytes:
            return FlushReason.BYTES
        assert self.oldest_ms is not None
        return FlushReason.AGE if now_ms - self.oldest_ms >= self.hints.max_age_ms else None

    def take(self, max_records: int, max_bytes: int) -> tuple[Any, ...] | None:
        if not self.pending:
            return None
        self.pending.sort(key=lambda e: e[0])
        n, size = 0, 0
        for _, _, s in self.pending[:max_records]:
            if n and size + s > max_bytes:
                break
            n, size = n + 1, size + s
        taken, self.pending = self.pending[:n], self.pending[n:]
        if not self.pending:
            self.oldest_ms = None
        self.next_batch += 1
        return (self.next_batch - 1, tuple(e[1] for e in taken), tuple(e[0] for e in taken),
                size)


buffer_ops = st.lists(st.one_of(
    # a KCL batch: (position seed, size) per item, positions jumbled and possibly repeated
    st.tuples(st.just("add"), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 300)),
                                       max_size=8)),
    st.tuples(st.just("take"), st.none()),
    st.tuples(st.just("take_all"), st.none()),
    st.tuples(st.just("tick"), st.integers(0, 3_000)),
), max_size=60)


@settings(max_examples=400, deadline=None)
@given(hints=hints_st, script=buffer_ops)
def test_columns_cut_the_batches_the_plain_per_item_buffer_cuts(
        hints: FlushHints, script: list[tuple[str, Any]]) -> None:
    """The columnar buffer takes the same batches (numbers, items, positions, bytes) as one
    holding a tuple per item, and agrees on its length, bytes and flush reason throughout."""
    buf: SinkBuffer[int] = SinkBuffer("s", hints)
    plain = PlainBuffer(hints)
    now, next_id = 0, 0
    for op, arg in script:
        if op == "add":
            items = list(range(next_id, next_id + len(arg)))
            next_id += len(arg)
            positions = [_pos(seed) for seed, _ in arg]
            sizes = [size for _, size in arg]
            buf.add_many(items, positions, sizes, now)
            plain.add_many(items, positions, sizes, now)
        elif op in ("take", "take_all"):
            batch = buf.take_batch() if op == "take" else buf.take_all()
            limits = (hints.max_records, hints.max_bytes) if op == "take" else (1 << 30, 1 << 62)
            want = plain.take(*limits)
            got = None if batch is None else (batch.batch_no, batch.items, batch.positions,
                                              batch.size_bytes)
            assert got == want
            if batch is not None:
                buf.mark_durable(batch)
        else:
            now += arg
        assert len(buf) == len(plain.pending)
        assert buf.pending_bytes == sum(e[2] for e in plain.pending)
        assert buf.should_flush(now) == plain.should_flush(now)


def test_columns_of_unequal_length_are_refused() -> None:
    buf: SinkBuffer[int] = SinkBuffer("s", FlushHints())
    with pytest.raises(ValueError):
        buf.add_many([1, 2], [_pos(1)], [1, 1], 0)
    assert len(buf) == 0
