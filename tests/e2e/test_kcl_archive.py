"""End to end: the real KCL MultiLangDaemon (Java) on the local stack, raw archive to S3.

Real components: KCL 2.5.8 multilang jars, kinesis-mock (Kinesis), dynalite (DynamoDB lease
table), moto server (S3), our supervisor and record-processor processes. One stack is shared
by the module; the tests run in order (produce, check, restart, check again).
A fresh lease table costs KCL a random 1-30 s wait before the first lease.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer.config import load_settings, with_overrides
from consumer.local.emulators import boto3_client
from consumer.local.producer import ProducerSpec, generate, produce
from consumer.local.reconcile import (
    ObjectCounter,
    opensearch_count,
    redshift_counts,
    s3_result_rows,
)
from consumer.local.stack import LocalRun
from consumer.runbook.checks import run_checks

pytestmark = pytest.mark.e2e

FIRST = ProducerSpec(records=3000, kpl_fraction=0.5, poison_ratio=0.02, seed=1)
SECOND = ProducerSpec(records=1000, kpl_fraction=0.5, poison_ratio=0.02, seed=2)


@pytest.fixture(scope="module", params=["POLLING", "FANOUT"])
def run(tmp_path_factory: pytest.TempPathFactory,
        request: pytest.FixtureRequest) -> Iterator[LocalRun]:
    """The whole module once per KCL retrieval mode: GetRecords polling, and enhanced fan-out
    (SubscribeToShard, which kinesis-mock implements)."""
    settings = with_overrides(
        load_settings(None, env={}),
        stream={"name": "e2e-archive", "app_name": "e2e-archive"},
        s3={"bucket": "e2e-archive"},
        kcl={"retrieval_mode": request.param},
        flush={"max_age_ms": 1000},
        windows={"size_ms": 10_000, "idle_timeout_ms": 2_000},
    )
    local = LocalRun(settings, Path(tmp_path_factory.mktemp("e2e")), shards=4)
    local.start()
    yield local
    local.stop()


def counters(run: LocalRun) -> tuple[ObjectCounter, ObjectCounter]:
    assert run.endpoints is not None
    s3 = boto3_client("s3", run.endpoints)
    bucket = run.settings.s3.bucket
    return (ObjectCounter(s3, bucket, run.settings.s3.archive_prefix),
            ObjectCounter(s3, bucket, run.settings.s3.quarantine_prefix))


def wait_total_rejected(archive: ObjectCounter, quarantine: ObjectCounter) -> int:
    return archive.distinct + sum(1 for r in quarantine.rows if r["stage"] != "window")


def wait_total(
    run: LocalRun, expected: int, timeout_s: float = 150
) -> tuple[ObjectCounter, ObjectCounter]:
    deadline = time.monotonic() + timeout_s
    while True:
        archive, quarantine = counters(run)
        archive.refresh()
        quarantine.refresh()
        if wait_total_rejected(archive, quarantine) >= expected or time.monotonic() > deadline:
            return archive, quarantine
        time.sleep(2)


def lease_rows(run: LocalRun) -> list[dict]:
    assert run.endpoints is not None
    ddb = boto3_client("dynamodb", run.endpoints)
    return ddb.scan(TableName=run.settings.stream.app_name)["Items"]


def test_every_record_is_archived_or_quarantined_once(run: LocalRun) -> None:
    assert run.endpoints is not None
    report = produce(boto3_client("kinesis", run.endpoints), run.settings.stream.name, FIRST,
                     progress=False)
    assert report.kinesis_records < report.user_records  # some went inside KPL aggregates
    archive, quarantine = wait_total(run, FIRST.records)
    sent = list(generate(FIRST))
    assert archive.duplicates == 0 and quarantine.duplicates == 0
    rejected = [r for r in quarantine.rows if r["stage"] != "window"]
    assert len(rejected) == sum(r.poison is not None for r in sent)
    assert archive.distinct == sum(r.poison is None for r in sent)
    # The payloads themselves came through: every valid reading's seq, exactly once.
    assert sorted(r["payload"]["seq"] for r in archive.rows) == sorted(
        i for i, r in enumerate(sent) if r.poison is None)
    shards = {r["shard"] for r in archive.rows}
    assert len(shards) == 4
    reasons = {r["reason"] for r in quarantine.rows}
    assert {"invalid_json", "kpl_checksum", "missing_field"} <= reasons


def window_results(run: LocalRun) -> list[dict]:
    assert run.endpoints is not None
    return s3_result_rows(boto3_client("s3", run.endpoints), run.settings.s3.bucket,
                          run.settings.s3.results_prefix)


def test_window_counts_plus_late_records_equal_the_archive(run: LocalRun) -> None:
    """Every valid record is in exactly one final window result, or quarantined as late.
    Idle shards close their last windows by processing time (idle_timeout_ms)."""
    deadline = time.monotonic() + 90
    while True:
        archive, quarantine = counters(run)
        archive.refresh()
        quarantine.refresh()
        late = sum(1 for r in quarantine.rows if r["stage"] == "window")
        results = window_results(run)
        counted = sum(r["count"] for r in results)
        if counted + late >= archive.distinct or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert counted + late == archive.distinct
    ids = [r["result_id"] for r in results]
    assert len(ids) == len(set(ids))
    assert all(r["is_final"] for r in results)

    # The same records and results in the two other sinks, once each.
    s = run.settings
    tables = redshift_counts(s.redshift.connect_dsn(), s.redshift.schema)
    assert tables["raw_records"].rows == tables["raw_records"].distinct == archive.distinct
    assert tables["window_results"].rows == tables["window_results"].distinct == len(ids)
    assert tables["window_results"].value_count == counted
    assert opensearch_count(s.opensearch.endpoint, s.opensearch.index_prefix) == len(ids)


def scrape(url: str) -> dict[str, float]:
    """Sum every sample of each metric family over its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def test_metrics_page_counts_what_was_produced_and_delivered(run: LocalRun) -> None:
    """/metrics merges the four processor processes (prometheus-client multiprocess mode)."""
    assert run.supervisor is not None
    sent = list(generate(FIRST))
    poison = sum(r.poison is not None for r in sent)
    deadline = time.monotonic() + 30
    while True:
        m = scrape(run.supervisor.metrics_url)
        archived = m.get("aetherstream_records_archived_total", 0)
        quarantined = m.get("aetherstream_records_quarantined_total", 0)
        if archived + quarantined >= FIRST.records or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert m["aetherstream_user_records_received_total"] == FIRST.records
    assert m["aetherstream_kinesis_records_received_total"] < FIRST.records  # KPL aggregates
    assert archived == FIRST.records - poison
    assert quarantined == poison + m.get("aetherstream_late_records_total", 0)
    assert m["aetherstream_leases_held"] == 4
    assert m["aetherstream_checkpoints_total"] >= 4


def test_runbook_checks_read_the_live_stack(run: LocalRun) -> None:
    """`aetherstream runbook`: every area's check passes on the healthy stack, and a worker
    that is gone shows up as a failed processing check, not as a crash."""
    assert run.endpoints is not None and run.supervisor is not None
    assert run.supervisor.server is not None
    clients = {n: boto3_client(n, run.endpoints) for n in ("kinesis", "dynamodb", "s3")}
    findings = run_checks(run.settings, clients, [run.supervisor.server.url])
    assert {f.area for f in findings} == {"ingestion", "processing", "delivery", "data-quality"}
    assert all(f.ok for f in findings), [f for f in findings if not f.ok]
    dead = run_checks(run.settings, clients, ["http://127.0.0.1:9"])
    assert [f.ok for f in dead if f.area == "processing"] == [False]
    strict = run_checks(run.settings, clients, [], max_quarantined=0)
    assert [f.ok for f in strict if f.area == "data-quality"] == [False]


def test_checkpoints_reach_the_lease_table(run: LocalRun) -> None:
    deadline = time.monotonic() + 30
    while True:
        rows = lease_rows(run)
        checkpoints = [r["checkpoint"]["S"] for r in rows]
        if len(rows) == 4 and all(c.isdigit() for c in checkpoints):
            break
        assert time.monotonic() < deadline, f"checkpoints not written: {checkpoints}"
        time.sleep(1)


def test_restart_archives_nothing_twice(run: LocalRun) -> None:
    assert run.supervisor is not None and run.endpoints is not None
    run.supervisor.stop()  # graceful: processors get shutdown_requested and checkpoint
    run.start_supervisor()
    produce(boto3_client("kinesis", run.endpoints), run.settings.stream.name, SECOND,
            progress=False)
    archive, quarantine = wait_total(run, FIRST.records + SECOND.records)
    assert archive.duplicates == 0 and quarantine.duplicates == 0
    assert wait_total_rejected(archive, quarantine) == FIRST.records + SECOND.records


def test_retrieval_mode_is_the_one_configured(run: LocalRun) -> None:
    """FANOUT really subscribes: KCL registered its stream consumer (named after the
    application) with kinesis-mock; polling registers none."""
    assert run.endpoints is not None
    kinesis = boto3_client("kinesis", run.endpoints)
    arn = kinesis.describe_stream_summary(StreamName=run.settings.stream.name)[
        "StreamDescriptionSummary"]["StreamARN"]
    listed = kinesis.list_stream_consumers(StreamARN=arn)["Consumers"]
    consumers = [c["ConsumerName"] for c in listed]
    fanout = run.settings.kcl.retrieval_mode == "FANOUT"
    expected = [run.settings.stream.app_name] if fanout else []
    assert consumers == expected
