"""Failure scenarios with the real KCL daemon: every sink reconciled, 0 lost, 0 duplicated.

Real components: KCL 2.5.8 MultiLangDaemon and our processors, kinesis-mock (Kinesis; the
only emulator whose resharding is right), dynalite (leases), moto (S3), PostgreSQL (in
Redshift's place; tables without primary keys, so duplicates would show), osmem-server (in
OpenSearch's place), and a fault-injecting HTTP proxy (tests/support/faulty_proxy.py) for
OpenSearch throttling. One emulator stack is shared; each scenario has its own stream,
lease table, bucket, schema and index prefix.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.config import Settings, load_settings, to_env, with_overrides
from consumer.kcl.supervisor import Supervisor
from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.producer import ProducerSpec, generate, produce
from consumer.local.reconcile import (
    ObjectCounter,
    opensearch_count,
    redshift_counts,
    s3_result_rows,
)
from consumer.local.stack import aws_env
from consumer.sinks.migrate import migrate_all
from tests.support.faulty_proxy import FaultyProxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("failures")) as s:
        yield s


class Scenario:
    """One stream with its own sinks, and the workers that consume it."""

    def __init__(self, stack: LocalStack, name: str, run_dir: Path,
                 opensearch_url: str | None = None) -> None:
        e = stack.endpoints
        self.stack, self.name, self.run_dir = stack, name, run_dir
        self.settings: Settings = with_overrides(
            load_settings(None, env={}),
            stream={"name": name, "app_name": name},
            s3={"bucket": name},
            kcl={"failover_time_ms": 5000, "shutdown_grace_ms": 10_000},
            flush={"max_age_ms": 1000},
            windows={"size_ms": 10_000, "idle_timeout_ms": 2_000},
            redshift={"enabled": True, "dsn": e.postgres_dsn, "dialect": "postgres",
                      "schema": name.replace("-", "_")},
            opensearch={"enabled": True, "endpoint": opensearch_url or e.opensearch_url,
                        "auth": "none",
                        "index_prefix": name},
            metrics={"port": 0},
        )
        stack.create_stream(name, 4)
        stack.prepare_leases(name, name)  # KCL skips its random wait on an empty lease table
        stack.create_bucket(name)
        migrate_all(with_overrides(self.settings, opensearch={"endpoint": e.opensearch_url}))
        self.sent: list[Any] = []
        self.workers: list[Supervisor] = []

    def worker(self, label: str) -> Supervisor:
        settings = with_overrides(self.settings, kcl={"worker_id": f"{self.name}-{label}"})
        env = {**aws_env(self.stack.endpoints), **to_env(settings)}
        worker = Supervisor(settings, self.run_dir / label, env)
        worker.start()
        self.workers.append(worker)
        return worker

    def produce(self, spec: ProducerSpec, rate: float = 0.0) -> threading.Thread:
        self.sent += list(generate(spec))
        kinesis = boto3_client("kinesis", self.stack.endpoints)
        thread = threading.Thread(target=produce, args=(kinesis, self.name, spec, rate, False))
        thread.start()
        return thread

    def counters(self) -> tuple[ObjectCounter, ObjectCounter]:
        s3 = boto3_client("s3", self.stack.endpoints)
        archive = ObjectCounter(s3, self.name, self.settings.s3.archive_prefix)
        quarantine = ObjectCounter(s3, self.name, self.settings.s3.quarantine_prefix)
        archive.refresh()
        quarantine.refresh()
        return archive, quarantine

    def wait_archived(self, at_least: int, timeout_s: float = 180) -> None:
        wait_until(lambda: self.counters()[0].distinct >= at_least, timeout_s,
                   f"fewer than {at_least} records archived")

    def wait_leases(self, count: int, timeout_s: float = 120) -> None:
        """Until the live workers hold `count` leases, so production starts mid-stream."""
        wait_until(lambda: sum(leases(w) for w in self.workers
                               if w.daemon and w.daemon.alive()) >= count,
                   timeout_s, "leases were not taken")

    @staticmethod
    def crash(worker: Supervisor) -> None:
        """SIGKILL to java and every processor: no flush, no checkpoint."""
        assert worker.daemon is not None
        worker.daemon.kill()
        worker.stop()

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def reconcile(self, timeout_s: float = 240) -> dict[str, int]:
        """Wait until every sink holds everything sent, then check nothing is there twice."""
        valid = sum(r.poison is None for r in self.sent)
        poison = len(self.sent) - valid
        deadline = time.monotonic() + timeout_s
        while True:
            state = self._state()
            done = (state["archived"] == valid and state["rejected"] == poison
                    and state["in_windows"] + state["late"] == valid
                    and state["redshift_raw"] == valid
                    and state["opensearch"] == state["s3_results"])
            if done or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert state["duplicates"] == 0, state
        assert (state["archived"], state["rejected"]) == (valid, poison), state
        assert state["in_windows"] + state["late"] == valid, state
        assert state["redshift_raw"] == valid, state
        assert state["redshift_results"] == state["s3_results"] == state["opensearch"], state
        # A partial window overwriting a complete one would make Redshift's sum smaller.
        assert state["redshift_in_windows"] == state["in_windows"], state
        return state

    def _state(self) -> dict[str, int]:
        archive, quarantine = self.counters()
        s = self.settings
        results = s3_result_rows(boto3_client("s3", self.stack.endpoints), self.name,
                                 s.s3.results_prefix)
        tables = redshift_counts(s.redshift.connect_dsn(), s.redshift.schema)
        raw, res = tables["raw_records"], tables["window_results"]
        ids = [r["result_id"] for r in results]
        return {
            "archived": archive.distinct,
            "rejected": quarantine.distinct_where(stage_is_window=False),
            "late": quarantine.distinct_where(stage_is_window=True),
            "in_windows": sum(r["count"] for r in results),
            "s3_results": len(set(ids)),
            "redshift_raw": raw.distinct,
            "redshift_results": res.distinct,
            "redshift_in_windows": res.value_count,
            "opensearch": opensearch_count(self.stack.endpoints.opensearch_url, self.name),
            "duplicates": (archive.duplicates + quarantine.duplicates + raw.duplicates
                           + res.duplicates + len(ids) - len(set(ids))),
        }


SPEC = ProducerSpec(records=3000, kpl_fraction=0.5, poison_ratio=0.01, devices=50)


def test_kill_9_mid_stream_then_restart(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "kill-restart", tmp_path)
    try:
        first = sc.worker("a")
        sc.wait_leases(4)
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        sc.crash(first)
        sc.worker("b")
        producer.join()
        sc.reconcile()
    finally:
        sc.stop_all()


def test_two_workers_one_killed_fails_over(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "failover", tmp_path)
    try:
        a, b = sc.worker("a"), sc.worker("b")
        sc.wait_leases(4)
        # KCL balances leases by stealing every 2 x failover time.
        wait_until(lambda: min(leases(a), leases(b)) >= 1, 120,
                   "the two workers never shared the shards")
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        sc.crash(a)
        producer.join()
        sc.reconcile()
    finally:
        sc.stop_all()


def test_postgres_down_for_30_seconds(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "redshift-outage", tmp_path)
    try:
        worker = sc.worker("a")
        sc.wait_leases(4)
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        stack.stop_postgres()
        time.sleep(30)
        stack.start_postgres()
        producer.join()
        sc.reconcile()
        retries = sample_sum(worker.metrics_url, "aetherstream_sink_retries_total",
                             sink="redshift-raw")
        assert retries > 0  # raw loads met the outage, waited it out, and lost nothing
    finally:
        sc.stop_all()


def test_opensearch_throttling_part_of_the_bulk_items(stack: LocalStack, tmp_path: Path) -> None:
    with FaultyProxy(stack.endpoints.opensearch_url, throttle_fraction=0.3, fail_fraction=0.1,
                     seed=5) as proxy:
        sc = Scenario(stack, "os-throttle", tmp_path, opensearch_url=proxy.url)
        try:
            sc.worker("a")
            sc.produce(SPEC).join()
            sc.reconcile()
        finally:
            sc.stop_all()
        assert proxy.stats.throttled_items > 0


def test_update_shard_count_mid_stream(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "reshard", tmp_path)
    try:
        sc.worker("a")
        sc.produce(ProducerSpec(records=1500, kpl_fraction=0.5, poison_ratio=0.01, seed=11)).join()
        sc.wait_archived(1000)
        kinesis = boto3_client("kinesis", stack.endpoints)
        kinesis.update_shard_count(StreamName=sc.name, TargetShardCount=8,
                                   ScalingType="UNIFORM_SCALING")
        wait_active(kinesis, sc.name)
        later = ProducerSpec(records=1500, kpl_fraction=0.5, poison_ratio=0.01, seed=12,
                             start_ms=SPEC.start_ms + 30_000)
        sc.produce(later).join()
        state = sc.reconcile(timeout_s=300)
        archive, _ = sc.counters()
        assert len({r["shard"] for r in archive.rows}) > 4  # children consumed too
        assert state["in_windows"] > 0
    finally:
        sc.stop_all()


def wait_until(check: Callable[[], bool], timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, failure
        time.sleep(1)


def leases(worker: Supervisor) -> float:
    return sample_sum(worker.metrics_url, "aetherstream_leases_held")


def sample_sum(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def wait_active(kinesis: Any, stream: str) -> None:
    deadline = time.monotonic() + 60
    while kinesis.describe_stream_summary(StreamName=stream)[
            "StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.5)
