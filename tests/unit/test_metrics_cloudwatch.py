"""The mirror's delta logic and its EMF output (parsed back as EMF)."""

from __future__ import annotations

import io
import json
import time
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from consumer.metrics.cloudwatch import (
    DeltaTracker,
    EmfMirror,
    build_mirror,
    start_mirror,
    unit_for,
)

STATIC = {"Application": "app", "Stream": "events"}


def _registry() -> tuple[CollectorRegistry, Counter, Gauge, Histogram]:
    reg = CollectorRegistry()
    counter = Counter("aetherstream_user_records_received_total", "x", ["shard"], registry=reg)
    gauge = Gauge("aetherstream_millis_behind_latest", "x", ["shard"], registry=reg)
    hist = Histogram("aetherstream_sink_flush_duration_seconds", "x", ["sink"], registry=reg)
    return reg, counter, gauge, hist


@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=20))
def test_counter_deltas_add_up_to_the_total(increments: list[int]) -> None:
    reg, counter, _, _ = _registry()
    tracker = DeltaTracker(STATIC)
    published = 0.0
    for inc in increments:
        counter.labels("s0").inc(inc)
        datums, totals = tracker.datums(reg.collect())
        tracker.commit(totals)
        published += sum(d.value for d in datums if d.name == "user_records_received")
    assert published == sum(increments)


def test_uncommitted_publish_is_resent_in_next_delta() -> None:
    reg, counter, _, _ = _registry()
    tracker = DeltaTracker(STATIC)
    counter.labels("s0").inc(4)
    tracker.datums(reg.collect())  # "failed" publish: no commit
    counter.labels("s0").inc(1)
    datums, _ = tracker.datums(reg.collect())
    assert [d.value for d in datums if d.name == "user_records_received"] == [5]


def test_units() -> None:
    assert unit_for("aetherstream_sink_flush_duration_seconds_sum") == "Seconds"
    assert unit_for("aetherstream_sink_flush_duration_seconds_count") == "Count"
    assert unit_for("aetherstream_received_bytes_total") == "Bytes"
    assert unit_for("aetherstream_millis_behind_latest") == "Milliseconds"
    assert unit_for("aetherstream_leases_held") == "None"


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_emf_lines_are_valid_emf() -> None:
    reg, counter, gauge, hist = _registry()
    out = io.StringIO()
    mirror = EmfMirror(reg, STATIC, 60, namespace="AetherStream", stream=out)
    counter.labels("shardId-0").inc(7)
    gauge.labels("shardId-0").set(1200)
    hist.labels("s3").observe(0.5)
    mirror.publish_once()
    counter.labels("shardId-0").inc(2)
    mirror.publish_once()

    events = _events(out.getvalue())
    for event in events:
        meta = event["_aws"]
        assert isinstance(meta["Timestamp"], int)
        (directive,) = meta["CloudWatchMetrics"]
        assert directive["Namespace"] == "AetherStream"
        for dim_set in directive["Dimensions"]:
            assert all(isinstance(event[k], str) for k in dim_set)
        for metric in directive["Metrics"]:
            assert isinstance(event[metric["Name"]], (int, float))
            assert metric["Unit"] in {"Count", "Seconds", "Bytes", "Milliseconds", "None"}
    shard_events = [e for e in events if e.get("Shard") == "shardId-0"]
    assert [e["user_records_received"] for e in shard_events] == [7, 2]
    assert shard_events[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["Application", "Stream", "Shard"]
    ]
    assert shard_events[0]["millis_behind_latest"] == 1200
    sink = next(e for e in events if e.get("Sink") == "s3")
    assert sink["sink_flush_duration_seconds_count"] == 1
    assert sink["sink_flush_duration_seconds_sum"] == 0.5


def test_emf_splits_events_at_100_metrics() -> None:
    reg = CollectorRegistry()
    for i in range(150):
        Gauge(f"aetherstream_g{i}", "x", registry=reg).set(i)
    out = io.StringIO()
    EmfMirror(reg, STATIC, 60, namespace="A", stream=out).publish_once()
    events = _events(out.getvalue())
    assert [len(e["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for e in events] == [100, 50]


def test_off_mode_builds_nothing(tmp_path: Any) -> None:
    mirror = build_mirror("off", multiproc_dir=str(tmp_path), namespace="A",
                          application="app", stream_name="s")
    assert mirror is None


def test_start_mirror_publishes_on_its_interval(capsys: Any) -> None:
    reg, counter, _, _ = _registry()
    counter.labels("shardId-0").inc(3)
    metrics = SimpleNamespace(cloudwatch="emf", namespace="AetherStream", publish_interval_s=0.05)
    settings: Any = SimpleNamespace(
        metrics=metrics, stream=SimpleNamespace(app_name="app", name="events")
    )
    mirror = start_mirror(settings, lambda: reg, env={})
    assert mirror is not None
    deadline = time.monotonic() + 10
    err = ""
    while "user_records_received" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capsys.readouterr().err
    mirror.stop()
    # stderr also carries log lines when an earlier test configured JSON logging: keep EMF.
    events = [e for e in _events(err + capsys.readouterr().err) if "_aws" in e]
    assert events
    assert sum(e.get("user_records_received", 0) for e in events) == 3
    assert all(e["Application"] == "app" and e["Stream"] == "events" for e in events)
    assert capsys.readouterr().out == ""
