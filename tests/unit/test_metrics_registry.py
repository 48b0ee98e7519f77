"""The registry's names and the multiprocess merge across real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import Metric

from consumer.metrics import registry
from consumer.metrics.registry import METRIC_NAMES, SAMPLE_NAMES

CHILD = textwrap.dedent(
    """
    import sys
    from consumer.metrics import registry as r
    r.assert_multiprocess_mode()
    shard = sys.argv[1]
    m = r.ShardMetrics(shard)
    m.batch_received([1, 1, 1, 2], [10, 10, 10, 5])
    m.lease_acquired()
    m.heartbeat(float(sys.argv[2]))
    r.MILLIS_BEHIND_LATEST.labels(shard).set(float(sys.argv[3]))
    r.SINK_FLUSH_DURATION_SECONDS.labels("s3").observe(0.2)
    r.SINK_BATCHES.labels("s3", "ok").inc()
    """
)


def _exposed_name(family: Metric) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_registry_names_exactly_match_metric_names() -> None:
    defined = sorted(_exposed_name(f) for f in registry.REGISTRY.collect())
    assert defined == sorted(METRIC_NAMES)
    assert all(n.startswith("aetherstream_") for n in METRIC_NAMES)
    assert "aetherstream_sink_flush_duration_seconds_bucket" in SAMPLE_NAMES


def _run_child(directory: Path, shard: str, heartbeat: float, behind: float) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(directory))
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, shard, str(heartbeat), str(behind)],
        env=env, check=True, capture_output=True, timeout=30,
    )
    assert proc.stdout == b""  # stdout is the KCL channel: metrics must never write to it


def test_multiprocess_merge_of_two_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after the test
    (tmp_path / "gauge_livesum_999999.db").write_bytes(b"")  # stale file of a previous run
    registry.configure_multiprocess(tmp_path)
    assert not (tmp_path / "gauge_livesum_999999.db").exists()
    _run_child(tmp_path, "shardId-0", 100.0, 5.0)
    _run_child(tmp_path, "shardId-1", 200.0, 7.0)

    merged = registry.merged_registry(tmp_path)
    get = merged.get_sample_value
    assert get("aetherstream_kinesis_records_received_total", {"shard": "shardId-0"}) == 2
    assert get("aetherstream_user_records_received_total", {"shard": "shardId-1"}) == 4
    assert get("aetherstream_received_bytes_total", {"shard": "shardId-0"}) == 35
    assert get("aetherstream_sink_batches_total", {"sink": "s3", "outcome": "ok"}) == 2
    assert get("aetherstream_sink_flush_duration_seconds_count", {"sink": "s3"}) == 2
    assert get("aetherstream_millis_behind_latest", {"shard": "shardId-1"}) == 7.0
    # Both children have exited, but until reaped their live gauges are still merged.
    assert get("aetherstream_leases_held", {}) == 2
    dead = registry.reap_dead_processes(tmp_path)
    assert len(dead) == 2
    merged = registry.merged_registry(tmp_path)
    assert merged.get_sample_value("aetherstream_leases_held", {}) is None
    assert merged.get_sample_value(
        "aetherstream_processor_heartbeat_timestamp_seconds", {"shard": "shardId-0"}
    ) is None
    # Counters survive the exit of the process that counted them.
    assert merged.get_sample_value(
        "aetherstream_user_records_received_total", {"shard": "shardId-0"}
    ) == 4


def test_a_scrape_while_a_process_creates_its_file_still_merges_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prometheus_client creates a process's file empty, then sizes it; a scrape in between
    # (a processor starting under load) failed with struct.error, a 500 from /metrics.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    registry.configure_multiprocess(tmp_path)
    _run_child(tmp_path, "shardId-0", 100.0, 5.0)
    (tmp_path / "counter_4242.db").write_bytes(b"")  # created, not yet sized
    merged = registry.merged_registry(tmp_path)
    assert merged.get_sample_value(
        "aetherstream_user_records_received_total", {"shard": "shardId-0"}) == 4


def test_assert_multiprocess_mode_detects_late_env(tmp_path: Path) -> None:
    code = (
        "import prometheus_client, os\n"
        f"os.environ['PROMETHEUS_MULTIPROC_DIR'] = {str(tmp_path)!r}\n"
        "from consumer.metrics import registry as r\n"
        "try:\n    r.assert_multiprocess_mode()\nexcept RuntimeError:\n    raise SystemExit(3)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=30, check=False)
    assert proc.returncode == 3


def test_drift_labels_are_bounded_and_printable() -> None:
    seen: set[str] = set()
    labels = [registry.drift_label(f"f{i}", seen, cap=3) for i in range(5)]
    assert labels == ["f0", "f1", "f2", "_other", "_other"]
    assert registry.drift_label("f1", seen, cap=3) == "f1"  # admitted ones keep their label
    assert registry.drift_label("_other", set(), cap=3) == "_other"
    assert registry.drift_label("a\ud800\n" + "x" * 200, set()) == "a\\ud800?" + "x" * 92


def test_count_schema_drift_adds_each_field_and_kind() -> None:
    def value(field: str, kind: str) -> float:
        got = registry.REGISTRY.get_sample_value(
            "aetherstream_schema_drift_total", {"field": field, "kind": kind})
        return got or 0.0

    before = value("test_temp", "unknown_field"), value("test_value", "type_change")
    registry.count_schema_drift({("test_temp", "unknown_field"): 3,
                                 ("test_value", "type_change"): 1})
    registry.count_schema_drift({})
    after = value("test_temp", "unknown_field"), value("test_value", "type_change")
    assert (after[0] - before[0], after[1] - before[1]) == (3.0, 1.0)
