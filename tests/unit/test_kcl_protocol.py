"""The fast processRecords decoder gives the processor exactly the records amazon_kclpy's own
decoder would (same bytes, keys, positions, arrival times), for lines in the daemon's shape
(consumer/bench/kcl_messages.py writes them byte for byte as KCL 2.5.8's MessageWriter does)."""

from __future__ import annotations

import io
import json

from amazon_kclpy import dispatch, kcl
from hypothesis import given
from hypothesis import strategies as st

from consumer.bench.kcl_messages import KclRecord, initialize_line, process_records_line
from consumer.kcl.processor import to_raw_records
from consumer.kcl.protocol import FastIO, RecordsInput
from consumer.records.model import Position

records = st.lists(st.builds(
    KclRecord, data=st.binary(max_size=64), partition_key=st.text(min_size=1, max_size=8),
    position=st.builds(Position, st.integers(0, 10**56), st.integers(0, 40)),
    arrival_ms=st.integers(0, 2**42)), max_size=30)


@given(records, st.integers(0, 10**7))
def test_fast_decoder_matches_amazon_kclpy(batch: list[KclRecord], behind: int) -> None:
    line = process_records_line(batch, behind).decode()
    fast = FastIO(io.StringIO(), io.StringIO(), io.StringIO()).load_action(line)
    stock = json.loads(line, object_hook=dispatch.message_decode)
    assert isinstance(fast, RecordsInput) and fast.action == stock.action == "processRecords"
    assert fast.millis_behind_latest == stock.millis_behind_latest == behind
    assert to_raw_records(fast.records) == to_raw_records(stock.records)


def test_other_messages_take_amazon_kclpy_decoder() -> None:
    io_handler = FastIO(io.StringIO(), io.StringIO(), io.StringIO())
    msg = io_handler.load_action(initialize_line("shardId-7", "TRIM_HORIZON", 0).decode())
    assert msg.action == "initialize" and msg.shard_id == "shardId-7"
    assert isinstance(io_handler, kcl._IOHandler)


def test_before_message_runs_once_before_each_message() -> None:
    seen: list[str] = []
    io_handler = FastIO(io.StringIO(), io.StringIO(), io.StringIO(),
                        before_message=lambda: seen.append("hook"))
    init = initialize_line("shardId-7", "TRIM_HORIZON", 0).decode()
    batch = process_records_line([KclRecord(b"x", "k", Position(1, 0), 5)], 0).decode()
    for line in (init, batch):
        seen.append(io_handler.load_action(line).action)
    assert seen == ["hook", "initialize", "hook", "processRecords"]
