"""The processor benchmark's driver against real amazon_kclpy processes over pipes.

No server is needed: the baselines write nothing, and the misbehaving processors here are
small amazon_kclpy programs written for the test (the driver is what is under test).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from consumer.bench import kcl_messages as km
from consumer.bench.kcl_driver import Feed, ProcessorFailed, RunResult, drive
from consumer.records.model import Position


def feed(n: int = 2_500, batch: int = 1_000, per_aggregate: int = 1) -> Feed:
    recs = km.kinesis_records([(f"dev-{i % 7}", b'{"v": %d}' % i, True) for i in range(n)],
                              1_795_000_000_000, 10, per_aggregate)
    lines = [(km.process_records_line(b, 0), b[-1].position) for b in km.batches(recs, batch)]
    return Feed(km.initialize_line(), lines, n)


def run(tmp_path: Path, argv: list[str], f: Feed, timeout_s: float = 60) -> tuple[
        RunResult, list[Position]]:
    seen: list[Position] = []
    result = drive("t", argv, {"PATH": "/usr/bin:/bin"}, f, tmp_path / "t.log", timeout_s,
                   seen.append)
    return result, seen


def script(body: str) -> list[str]:
    """A processor: amazon_kclpy's KCLProcess around a v3 processor with the given body."""
    code = textwrap.dedent("""
        import base64, subprocess, sys
        from amazon_kclpy import kcl
        from amazon_kclpy.v3 import processor
        class P(processor.RecordProcessorBase):
            def initialize(self, i): pass
            def lease_lost(self, i): pass
            def shard_ended(self, i): pass
        """) + textwrap.dedent(body) + "\nkcl.KCLProcess(P()).run()\n"
    return [sys.executable, "-c", code]


@pytest.mark.parametrize("module", ["consumer.bench.noop_processor",
                                    "consumer.bench.decode_processor"])
def test_baselines_checkpoint_every_batch_and_end_at_the_last_record(
        tmp_path: Path, module: str) -> None:
    f = feed(per_aggregate=25)
    result, seen = run(tmp_path, [sys.executable, "-m", module], f)
    assert result.records == 2_500 and result.checkpoint_ok
    assert seen == [p for _, p in f.batches] + [f.last]  # each batch, then at shutdown
    assert result.checkpoint_requests == len(f.batches) + 1 and result.refused_checkpoints == 0
    assert 0 < result.init_cpu_s <= result.cpu_s and result.wall_s > 0


def test_stray_output_is_ignored_and_a_checkpoint_past_the_batch_refused(
        tmp_path: Path) -> None:
    proc = script("""
        def process_records(self, i):
            print("a library writing to stdout", flush=True)
            last = i.records[-1]
            try:
                i.checkpointer.checkpoint(str(int(last.sequence_number) + 1), 0)
            except Exception:
                pass
        def shutdown_requested(self, i): pass
        P.process_records = process_records
        P.shutdown_requested = shutdown_requested
    """)
    result, seen = run(tmp_path, proc, feed())
    assert result.ignored_lines == 3 and seen == []
    assert result.refused_checkpoints == 3 and result.checkpointed is None
    assert not result.checkpoint_ok


def test_cpu_of_a_child_process_is_counted(tmp_path: Path) -> None:
    proc = script("""
        def process_records(self, i):
            burn = "import time; all(iter(lambda: time.process_time() < 0.5, False))"
            subprocess.run([sys.executable, "-c", burn], check=True)
        def shutdown_requested(self, i):
            i.checkpointer.checkpoint()
        P.process_records = process_records
        P.shutdown_requested = shutdown_requested
    """)
    result, _ = run(tmp_path, proc, feed(n=10))
    assert result.checkpoint_ok
    assert result.cpu_s - result.init_cpu_s >= 0.5  # the child's burn; the parent only waits


def test_a_processor_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    proc = script("""
        def process_records(self, i):
            sys.stderr.write("boom: disk on fire\\n"); sys.stderr.flush()
            import os; os._exit(70)
        P.process_records = process_records
    """)
    with pytest.raises(ProcessorFailed, match=r"(?s)processRecords.*boom: disk on fire"):
        run(tmp_path, proc, feed())


def test_a_hung_processor_times_out(tmp_path: Path) -> None:
    proc = script("""
        def process_records(self, i):
            import time; time.sleep(60)
        P.process_records = process_records
    """)
    with pytest.raises(ProcessorFailed, match="timed out after 2 s"):
        run(tmp_path, proc, feed(n=10), timeout_s=2)


def test_the_idle_tail_sends_empty_batches_outside_the_wall_time(tmp_path: Path) -> None:
    proc = script("""
        def process_records(self, i):
            if not i.records:
                sys.stderr.write("empty batch\\n"); sys.stderr.flush()
            i.checkpointer.checkpoint()
        def shutdown_requested(self, i): pass
        P.process_records = process_records
        P.shutdown_requested = shutdown_requested
    """)
    f = feed(n=10)
    result, _ = run(tmp_path, proc, Feed(f.init, f.batches, f.records, idle_tail_s=1.0,
                                         idle_interval_s=0.25))
    empties = (tmp_path / "t.log").read_text().count("empty batch")
    assert empties >= 4 and result.checkpoint_requests == len(f.batches) + empties
    assert result.checkpoint_ok and result.idle_tail_s >= 1.0 > result.wall_s
