"""The fast processRecords decoder gives the processor exactly the records amazon_kclpy's own
decoder would (same bytes, keys, positions, arrival times), for lines in the daemon's shape
(consumer/bench/kcl_messages.py writes them byte for byte as KCL 2.5.8's MessageWriter does)."""

from __future__ import annotations

import io
import json
from typing import Any

from amazon_kclpy import dispatch, kcl
from amazon_kclpy.v3 import processor
from hypothesis import given
from hypothesis import strategies as st

from consumer.bench.kcl_messages import (
    KclRecord,
    checkpoint_answer,
    initialize_line,
    process_records_line,
    shutdown_requested_line,
)
from consumer.kcl.processor import to_raw_records
from consumer.kcl.protocol import FastIO, RecordsInput, kcl_process
from consumer.records.model import Position

records = st.lists(st.builds(
    KclRecord, data=st.binary(max_size=64), partition_key=st.text(min_size=1, max_size=8),
    position=st.builds(Position, st.integers(0, 10**56), st.integers(0, 40)),
    arrival_ms=st.integers(0, 2**42)), max_size=30)


@given(records, st.integers(0, 10**7))
def test_fast_decoder_matches_amazon_kclpy(batch: list[KclRecord], behind: int) -> None:
    line = process_records_line(batch, behind)
    fast = FastIO(io.BytesIO(), io.StringIO(), io.StringIO()).load_action(line)
    stock = json.loads(line, object_hook=dispatch.message_decode)
    assert isinstance(fast, RecordsInput) and fast.action == stock.action == "processRecords"
    assert fast.millis_behind_latest == stock.millis_behind_latest == behind
    assert to_raw_records(fast.records) == to_raw_records(stock.records)


@given(st.lists(st.builds(
    KclRecord, data=st.binary(max_size=8), partition_key=st.sampled_from(["a", "bb", "ccc"]),
    position=st.builds(Position, st.integers(0, 10**56), st.integers(0, 40)),
    arrival_ms=st.integers(0, 2**42)), min_size=2, max_size=30))
def test_a_batch_shares_one_object_per_distinct_partition_key(batch: list[KclRecord]) -> None:
    fast = FastIO(io.BytesIO(), io.StringIO(), io.StringIO()).load_action(
        process_records_line(batch, 0))
    keys = [r.partition_key for r in fast.records]
    assert len({id(k) for k in keys}) == len(set(keys))
    assert keys == [r.partition_key for r in batch]


def test_other_messages_take_amazon_kclpy_decoder() -> None:
    io_handler = FastIO(io.BytesIO(), io.StringIO(), io.StringIO())
    msg = io_handler.load_action(initialize_line("shardId-7", "TRIM_HORIZON", 0))
    assert msg.action == "initialize" and msg.shard_id == "shardId-7"
    assert isinstance(io_handler, kcl._IOHandler)


def test_before_message_runs_once_before_each_message() -> None:
    seen: list[str] = []
    io_handler = FastIO(io.BytesIO(), io.StringIO(), io.StringIO(),
                        before_message=lambda: seen.append("hook"))
    init = initialize_line("shardId-7", "TRIM_HORIZON", 0)
    batch = process_records_line([KclRecord(b"x", "k", Position(1, 0), 5)], 0)
    for line in (init, batch):
        seen.append(io_handler.load_action(line).action)
    assert seen == ["hook", "initialize", "hook", "processRecords"]


class Checkpointing(processor.RecordProcessorBase):  # type: ignore[misc]
    """A processor that checkpoints each batch at its last record, as ours does."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, Position]] = []

    def initialize(self, initialize_input: Any) -> None:
        pass

    def process_records(self, records_input: RecordsInput) -> None:
        self.got += [(r.data, r.position) for r in records_input.records]
        last = records_input.records[-1].position
        records_input.checkpointer.checkpoint(str(last.sequence), last.sub_sequence)

    def lease_lost(self, lease_lost_input: Any) -> None:
        pass

    def shard_ended(self, shard_ended_input: Any) -> None:
        pass

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        pass


def test_a_whole_exchange_over_binary_input() -> None:
    """kcl_process over bytes, as the worker runs it: initialize, a batch whose checkpoint
    request is answered on the same input, shutdownRequested; every answer in order."""
    batch = [KclRecord(b'{"v":1}', "k", Position(10**55, 0), 5),
             KclRecord(b'{"v":2}', "k", Position(10**55 + 7, 2), 6)]
    daemon = io.BytesIO(b"".join(line + b"\n" for line in (
        initialize_line("shardId-7", "TRIM_HORIZON", 0),
        process_records_line(batch, 0),
        checkpoint_answer(str(10**55 + 7), 2, None),
        shutdown_requested_line(),
    )))
    out = io.StringIO()
    seen = Checkpointing()
    kcl_process(seen, daemon, out, io.StringIO()).run()
    assert seen.got == [(r.data, r.position) for r in batch]
    sent = [json.loads(line) for line in out.getvalue().splitlines() if line]
    assert sent == [
        {"action": "status", "responseFor": "initialize"},
        {"action": "checkpoint", "sequenceNumber": str(10**55 + 7), "subSequenceNumber": 2},
        {"action": "status", "responseFor": "processRecords"},
        {"action": "status", "responseFor": "shutdownRequested"},
    ]
