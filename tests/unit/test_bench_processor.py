"""The processor benchmark's pure parts: the daemon's messages, its checkpoint rules, figures.

The messages are checked two ways: against amazon_kclpy's own decoder (what reads them in a
real processor) and against bytes the KCL 2.5.8 jar's MessageWriter produced (its message
classes serialized with a plain Jackson ObjectMapper in jshell, pasted below).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
from amazon_kclpy import dispatch, messages
from hypothesis import given
from hypothesis import strategies as st

from consumer.bench import kcl_messages as km
from consumer.bench import stats
from consumer.bench.kcl_driver import RunResult
from consumer.records.model import Position

SEQ = "49590338271490256608559692538361571095921575989136588898"
# Written by the jar's own classes (see the module docstring).
JAR_CHECKPOINT = (b'{"action":"checkpoint","sequenceNumber":"' + SEQ.encode()
                  + b'","subSequenceNumber":3,"error":null}')
JAR_REFUSED = (b'{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,'
               b'"error":"ThrottlingException"}')
JAR_RECORDS = (b'{"action":"processRecords","records":[{"data":"aGVsbG8=","partitionKey":"pk",'
               b'"sequenceNumber":"4959","approximateArrivalTimestamp":1700000000000,'
               b'"subSequenceNumber":0,"action":"record"}],"millisBehindLatest":0}')
JAR_INIT = (b'{"action":"initialize","shardId":"shardId-000000000000",'
            b'"sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0}')


def decode(line: bytes) -> object:
    return json.loads(line, object_hook=dispatch.message_decode)  # amazon_kclpy's load_action


def test_lines_are_byte_for_byte_what_the_daemon_writes() -> None:
    assert km.checkpoint_answer(SEQ, 3, None) == JAR_CHECKPOINT
    assert km.checkpoint_answer(None, None, "ThrottlingException") == JAR_REFUSED
    record = km.KclRecord(b"hello", "pk", Position(4959, 0), 1_700_000_000_000)
    assert km.process_records_line([record], 0) == JAR_RECORDS
    assert km.initialize_line() == JAR_INIT
    assert km.shutdown_requested_line() == b'{"action":"shutdownRequested"}'


def test_amazon_kclpy_reads_what_we_send() -> None:
    recs = [km.KclRecord(bytes([i]) * 40, f"dev-{i}", Position(km.SEQUENCE_BASE + i, i % 3),
                         1_795_000_000_000 + i) for i in range(5)]
    batch = decode(km.process_records_line(recs, 1234))
    assert isinstance(batch, messages.ProcessRecordsInput)
    assert batch.millis_behind_latest == 1234
    got = [(r.binary_data, r.partition_key, r.sequence_number, r.sub_sequence_number,
            r.timestamp_millis) for r in batch.records]
    assert got == [(r.data, r.partition_key, str(r.position.sequence), r.position.sub_sequence,
                    r.arrival_ms) for r in recs]
    init = decode(km.initialize_line("shardId-000000000007"))
    assert isinstance(init, messages.InitializeInput)
    assert (init.shard_id, init.sequence_number, init.sub_sequence_number) == (
        "shardId-000000000007", "TRIM_HORIZON", 0)
    answer = decode(km.checkpoint_answer(SEQ, 2, "ShutdownException"))
    assert isinstance(answer, messages.CheckpointInput)
    assert (answer.sequence_number, answer.sub_sequence_number, answer.error) == (
        SEQ, 2, "ShutdownException")


@pytest.mark.parametrize("line", [b"\n", b"   ", b"hello from a library\n", b"{not json}\n",
                                  b'{"no_action": 1}\n', b"[1, 2]\n"])
def test_lines_the_daemon_ignores(line: bytes) -> None:
    assert km.parse_line(line) is None


def test_a_status_line_is_a_message() -> None:
    assert km.parse_line(b'{"action": "status", "responseFor": "initialize"}\n') == {
        "action": "status", "responseFor": "initialize"}


payloads = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.binary(max_size=8), st.booleans()),
                    min_size=1, max_size=120)


@given(payloads, st.integers(1, 30))
def test_kinesis_positions_group_aggregates(items: list[tuple[str, bytes, bool]],
                                            per_aggregate: int) -> None:
    recs = km.kinesis_records(items, 1_000, 10, per_aggregate)
    assert [(r.partition_key, r.data) for r in recs] == [(k, d) for k, d, _ in items]
    positions = [r.position for r in recs]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert all(len(str(p.sequence)) == 56 for p in positions)
    by_sequence: dict[int, list[km.KclRecord]] = {}
    for r in recs:
        by_sequence.setdefault(r.position.sequence, []).append(r)
    for group in by_sequence.values():  # one Kinesis record: subs 0..n-1, one arrival time
        assert [r.position.sub_sequence for r in group] == list(range(len(group)))
        assert len(group) <= max(per_aggregate, 1)
        assert len({r.arrival_ms for r in group}) == 1
    for r, (_, _, aggregatable) in zip(recs, items, strict=True):
        if not aggregatable or per_aggregate == 1:
            assert len(by_sequence[r.position.sequence]) == 1


def test_plain_records_each_have_their_own_sequence_number() -> None:
    recs = km.kinesis_records([("k", b"x", True)] * 4, 1_000, 10, 1)
    assert [r.position.sub_sequence for r in recs] == [0, 0, 0, 0]
    assert [r.arrival_ms for r in recs] == [1_250, 1_260, 1_270, 1_280]


@given(payloads, st.integers(1, 30), st.integers(1, 50))
def test_batches_cover_everything_and_never_split_an_aggregate(
        items: list[tuple[str, bytes, bool]], per_aggregate: int, size: int) -> None:
    recs = km.kinesis_records(items, 0, 1, per_aggregate)
    out = list(km.batches(recs, size))
    assert [r for b in out for r in b] == recs
    for b in out:
        assert b[0].position.sub_sequence == 0  # every batch starts a Kinesis record
        assert len(b) <= size or len({r.position.sequence for r in b}) == 1


def test_millis_behind_latest() -> None:
    recs = km.kinesis_records([("k", b"x", False)] * 3, 0, 10, 1)
    assert km.millis_behind(recs[:2], recs[-1].arrival_ms) == 10
    assert km.millis_behind(recs, recs[-1].arrival_ms) == 0


def request(seq: object, sub: object) -> dict[str, object]:
    return {"action": "checkpoint", "sequenceNumber": seq, "subSequenceNumber": sub}


def test_ledger_follows_kcl_checkpoint_rules() -> None:
    ledger = km.CheckpointLedger()
    assert ledger.answer(request(None, None)) == (km.checkpoint_answer(None, None, None), True)
    assert ledger.checkpointed is None  # nothing delivered: nothing moves
    assert not ledger.answer(request("100", 0))[1]  # nothing delivered: out of range
    ledger.deliver(Position(200, 4))
    assert ledger.answer(request("150", 2)) == (km.checkpoint_answer("150", 2, None), True)
    assert ledger.checkpointed == Position(150, 2)
    refused = ledger.answer(request("149", 0))  # behind the last checkpoint
    assert refused == (km.checkpoint_answer("149", 0, km.REFUSED), False)
    assert not ledger.answer(request("200", 5))[1]  # past the largest delivered
    assert not ledger.answer(request("SHARD_END", None))[1]
    assert ledger.answer(request("200", None))[1] and ledger.checkpointed == Position(200, 0)
    assert ledger.answer(request(None, None))[1] and ledger.checkpointed == Position(200, 4)
    assert (ledger.requests, ledger.refused) == (8, 4)


def test_nearest_rank_and_size_summary() -> None:
    assert stats.size_summary([]) == stats.SizeSummary(0, 0, 0, 0)
    assert stats.size_summary([7]) == stats.SizeSummary(1, 7, 7, 7)
    values = list(range(1, 101))[::-1]  # 100..1, unsorted on purpose
    assert stats.size_summary(values) == stats.SizeSummary(100, 50, 90, 100)
    assert stats.nearest_rank([1, 2, 3, 4], 0.5) == 2
    assert stats.nearest_rank([1, 2, 3, 4], 0.9) == 4
    with pytest.raises(ValueError):
        stats.nearest_rank([], 0.5)
    assert str(stats.size_summary([1_500_000, 2_000, 900])) == (
        "3 objects, median 2.0 kB, p90 1.5 MB, max 1.5 MB")


def test_tree_seconds_counts_live_members_with_their_reaped_children() -> None:
    root = stats.CpuTimes(1.0, 0.5, children_user=2.0, children_system=0.25)
    live_child = stats.CpuTimes(0.5, 0.25)
    assert root.total == 3.75
    assert stats.tree_seconds([root, live_child]) == 4.5
    assert stats.tree_seconds([]) == 0


def test_rates_and_ratios() -> None:
    assert stats.per_second(10, 4) == 2.5
    assert stats.per_second(10, 0) == math.inf
    assert stats.ratio(50, 200) == 0.25
    assert math.isnan(stats.ratio(50, 0))


def test_table_pads_columns() -> None:
    lines = stats.render_table(("a", "long header"), [["value", "1"], ["v", "22"]])
    assert lines == ["| a     | long header |", "|-------|-------------|",
                     "| value | 1           |", "| v     | 22          |"]


def test_base64_is_standard_with_padding() -> None:
    rec = km.KclRecord(b"\xff\xfe\x00", "k", Position(1, 0), 0)
    line = json.loads(km.process_records_line([rec], 0))
    assert line["records"][0]["data"] == base64.b64encode(b"\xff\xfe\x00").decode() == "//4A"


def test_processor_env_carries_the_config_and_nothing_of_the_callers(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from consumer.bench import processor as bench
    from consumer.config import Settings, load_settings

    monkeypatch.setenv("AETHERSTREAM_FLUSH_MAX_RECORDS", "7")  # the caller's, not the bench's
    monkeypatch.setenv("AWS_PROFILE", "production")
    cfg = bench.CONFIGS["all"]
    settings = bench.config_settings(Settings(), cfg, "postgresql://x@h/db", "http://os:1",
                                     tmp_path)
    env = bench.processor_env(settings, {"AWS_REGION": "us-east-1"})
    assert load_settings(env=env) == settings  # the child reads exactly these settings
    assert "AWS_PROFILE" not in env and env["AWS_REGION"] == "us-east-1"
    assert env["AETHERSTREAM_KCL_WORKER_ID"] == bench.WORKER_ID
    assert env["AETHERSTREAM_STREAM_APP_NAME"] == "bench-all"  # the lease table's name
    assert env["PROMETHEUS_MULTIPROC_DIR"] == settings.metrics.multiproc_dir
    assert settings.redshift.enabled and settings.opensearch.enabled and settings.windows.enabled
    s3_only = bench.config_settings(Settings(), bench.CONFIGS["s3"], "", "", tmp_path)
    assert not (s3_only.windows.enabled or s3_only.redshift.enabled
                or s3_only.opensearch.enabled)


def test_idle_tail_outlasts_the_last_window() -> None:
    from consumer.bench import processor as bench
    from consumer.config import Settings, with_overrides

    s = with_overrides(Settings(), windows={"size_ms": 10_000, "idle_timeout_ms": 2_000,
                                            "out_of_orderness_ms": 5_000})
    assert bench.idle_tail_s(bench.CONFIGS["s3-windows"], s) == 18.0
    assert bench.idle_tail_s(bench.CONFIGS["s3"], s) == 0.0  # no windows, nothing to close


def _run(name: str, cpu_s: float, checkpointed: Position | None) -> RunResult:
    return RunResult(name, 10, cpu_s, 0.1, 1.0, 0.0, checkpointed, Position(9, 0), 1, 0, 0, 0,
                     Path("log"))


def test_a_configuration_shows_each_processors_median_round() -> None:
    from consumer.bench import processor as bench

    last = Position(9, 0)
    rounds = [bench.RoundReport(runs={"ours": _run("ours", cpu, last if cpu != 3.0 else None),
                                      "no-op": _run("no-op", noop, last)},
                                lease_checkpoint_ok=True)
              for cpu, noop in ((3.0, 1.0), (1.0, 1.2), (2.0, 0.9))]
    report = bench.ConfigReport(bench.CONFIGS["s3"], rounds)
    assert report.run("ours").cpu_s == 2.0 and report.run("no-op").cpu_s == 1.0
    assert report.cpu_range("ours") == (1.0, 3.0)
    assert report.shown is rounds[2]
    # A round that failed to reconcile is reported, whichever round is shown.
    assert report.problems == [f"round 1: last checkpoint None, last record sent {last}"]
