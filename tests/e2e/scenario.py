"""One stream with its own sinks and workers, reconciled by content (tests/e2e helpers).

Reconciliation compares what was sent with what every sink holds:
- raw records by identity (shard, sequence, sub-sequence) and by payload: the S3 archive holds
  every valid reading once, with the payload that was sent; Redshift's raw_records holds the
  same identities once each; the quarantine holds every poison record's bytes once;
- window results per result id: count, sum, min, max and is_final (plus shard, start, key)
  are equal in the S3 results objects, Redshift's window_results and the OpenSearch documents,
  each held once; and they equal the tumbling windows the archive implies (every archived
  record not quarantined as late, in its shard's window).
"""

from __future__ import annotations

import base64
import math
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from consumer.config import Settings, load_settings, to_env, with_overrides
from consumer.kcl.supervisor import Supervisor
from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.producer import ProducerSpec, UserRecord, generate, produce
from consumer.local.reconcile import (
    Identity,
    ObjectCounter,
    ResultContent,
    expected_results,
    opensearch_results_by_id,
    redshift_raw_identities,
    redshift_results_by_id,
    result_differences,
    s3_result_rows,
    s3_results_by_id,
)
from consumer.local.stack import aws_env
from consumer.pipeline import contract_from
from consumer.sinks.migrate import migrate_all
from tests.support.steady_producer import SteadyProducer


def identity(row: dict[str, Any]) -> Identity:
    return row["shard"], row["sequence"], row["sub_sequence"]


@dataclass
class Contents:
    """Everything the sinks hold for one scenario, read back once."""

    archive: ObjectCounter
    quarantine: ObjectCounter
    redshift_raw: Counter[Identity]
    results: dict[str, dict[str, list[ResultContent]]]  # sink -> result id -> contents

    @property
    def late(self) -> set[Identity]:
        return {identity(r) for r in self.quarantine.rows if r.get("stage") == "window"}

    def seq_of(self) -> dict[Identity, int]:
        return {identity(r): r["payload"]["seq"] for r in self.archive.rows}


class Scenario:
    """One stream with its own sinks, and the workers that consume it."""

    def __init__(self, stack: LocalStack, name: str, run_dir: Path,
                 opensearch_url: str | None = None, shards: int = 4,
                 windows: dict[str, Any] | None = None, config: Path | None = None,
                 aggregations: tuple[str, ...] = ()) -> None:
        """config: a settings file for the workers (its [[transform]] and [[aggregation]]
        tables; the overrides below win over its sections); aggregations: the names it
        declares, whose tables and templates are migrated too."""
        e = stack.endpoints
        self.stack, self.name, self.run_dir, self.config = stack, name, run_dir, config
        self.settings: Settings = with_overrides(
            load_settings(config, env={}),
            stream={"name": name, "app_name": name},
            s3={"bucket": name},
            kcl={"failover_time_ms": 5000, "shutdown_grace_ms": 10_000},
            flush={"max_age_ms": 1000},
            windows={"size_ms": 10_000, "idle_timeout_ms": 2_000, **(windows or {})},
            redshift={"enabled": True, "dsn": e.postgres_dsn, "dialect": "postgres",
                      "schema": name.replace("-", "_")},
            opensearch={"enabled": True, "endpoint": opensearch_url or e.opensearch_url,
                        "auth": "none",
                        "index_prefix": name},
            metrics={"port": 0},
        )
        stack.create_stream(name, shards)
        stack.prepare_leases(name, name)  # KCL skips its random wait on an empty lease table
        stack.create_bucket(name)
        migrate_all(with_overrides(self.settings, opensearch={"endpoint": e.opensearch_url}),
                    aggregations)
        self.sent: list[UserRecord] = []
        self.workers: list[Supervisor] = []
        self.producers: list[SteadyProducer] = []
        s3 = boto3_client("s3", stack.endpoints)
        # Objects are immutable, so one counter per prefix reads each object once.
        self._archive = ObjectCounter(s3, name, self.settings.s3.archive_prefix)
        self._quarantine = ObjectCounter(s3, name, self.settings.s3.quarantine_prefix)

    # --- workers and producers ---------------------------------------------------------

    def worker_id(self, label: str) -> str:
        return f"{self.name}-{label}"

    def worker(self, label: str) -> Supervisor:
        settings = with_overrides(self.settings, kcl={"worker_id": self.worker_id(label)})
        env = {**aws_env(self.stack.endpoints), **to_env(settings)}
        if self.config is not None:
            env["AETHERSTREAM_CONFIG"] = str(self.config)
        worker = Supervisor(settings, self.run_dir / label, env)
        worker.start()
        self.workers.append(worker)
        return worker

    def produce(self, spec: ProducerSpec, rate: float = 0.0) -> Any:
        """Burst-paced (consumer/local/producer.py): chunks of 2000 records."""
        import threading

        self.sent += list(generate(spec))
        kinesis = boto3_client("kinesis", self.stack.endpoints)
        thread = threading.Thread(target=produce, args=(kinesis, self.name, spec, rate, False))
        thread.start()
        return thread

    def steady(self, records: Iterable[UserRecord], rate: float) -> SteadyProducer:
        """A producer sending at a steady rate until finish(); see finish_producers()."""
        producer = SteadyProducer(boto3_client("kinesis", self.stack.endpoints), self.name,
                                  records, rate)
        producer.start()
        self.producers.append(producer)
        return producer

    def finish_producers(self) -> None:
        for producer in self.producers:
            self.sent += producer.finish()
        self.producers = []

    @staticmethod
    def crash(worker: Supervisor) -> None:
        """SIGKILL to java and every processor: no flush, no checkpoint."""
        assert worker.daemon is not None
        worker.daemon.kill()
        worker.stop()

    def stop_all(self) -> None:
        for producer in self.producers:
            producer.finish()
        for worker in self.workers:
            worker.stop()

    # --- waiting -----------------------------------------------------------------------

    def counters(self) -> tuple[ObjectCounter, ObjectCounter]:
        """The archive and the quarantine as they are now."""
        self._archive.refresh()
        self._quarantine.refresh()
        return self._archive, self._quarantine

    def archived(self) -> int:
        self._archive.refresh()
        return self._archive.distinct

    def archived_shards(self) -> set[str]:
        self._archive.refresh()
        return {r["shard"] for r in self._archive.rows}

    def wait_archived(self, at_least: int, timeout_s: float = 180) -> None:
        wait_until(lambda: self.archived() >= at_least, timeout_s,
                   f"fewer than {at_least} records archived")

    def wait_leases(self, count: int, timeout_s: float = 120) -> None:
        """Until the live workers hold `count` leases, so production starts mid-stream."""
        wait_until(lambda: sum(leases(w) for w in self.workers
                               if w.daemon and w.daemon.alive()) >= count,
                   timeout_s, "leases were not taken")

    def lease_owners(self) -> dict[str, str | None]:
        """KCL's own lease table: shard -> leaseOwner, for shards not finished (SHARD_END)."""
        ddb = boto3_client("dynamodb", self.stack.endpoints)
        items = ddb.scan(TableName=self.name, ConsistentRead=True)["Items"]
        return {i["leaseKey"]["S"]: i.get("leaseOwner", {}).get("S") for i in items
                if i.get("checkpoint", {}).get("S") != "SHARD_END"}

    def wait_owners(self, check: Callable[[dict[str, str | None]], bool], failure: str,
                    timeout_s: float = 120) -> float:
        """Until KCL's lease table satisfies check; returns the seconds it took."""
        started = time.monotonic()
        wait_until(lambda: check(self.lease_owners()), timeout_s,
                   lambda: f"{failure}: owners {self.lease_owners()}")
        return time.monotonic() - started

    def first_writes_after(self, since: float, shards: Iterable[str]) -> dict[str, float]:
        """Per shard, seconds from `since` (time.time()) to the first archive object written
        after it: with the old owner dead, the new owner's first durable batch."""
        s3 = boto3_client("s3", self.stack.endpoints)
        first: dict[str, float] = {}
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=self.settings.s3.archive_prefix)
        for obj in (o for page in pages for o in page.get("Contents", [])):
            shard = next((part[len("shard="):] for part in obj["Key"].split("/")
                          if part.startswith("shard=")), None)
            written = obj["LastModified"].timestamp() - since
            if shard in set(shards) and written > 0:
                first[shard] = min(first.get(shard, written), written)
        return first

    # --- reconciliation ----------------------------------------------------------------

    def contents(self) -> Contents:
        self._archive.refresh()
        self._quarantine.refresh()
        s = self.settings
        dsn, schema = s.redshift.connect_dsn(), s.redshift.schema
        s3 = boto3_client("s3", self.stack.endpoints)
        return Contents(
            self._archive, self._quarantine, redshift_raw_identities(dsn, schema),
            {"s3": s3_results_by_id(s3_result_rows(s3, self.name, s.s3.results_prefix)),
             "redshift": redshift_results_by_id(dsn, schema),
             "opensearch": opensearch_results_by_id(self.stack.endpoints.opensearch_url,
                                                    self.name)})

    def problems(self, c: Contents) -> list[str]:
        """Every difference between what was sent and what the sinks hold; [] when equal."""
        out: list[str] = []
        # Readings by content (several specs may reuse a seq): each sent payload archived once.
        valid = Counter(canonical(orjson.loads(r.data)) for r in self.sent if r.poison is None)
        poison = Counter(r.data for r in self.sent if r.poison is not None)
        for kind, counter in (("archive", c.archive), ("quarantine", c.quarantine)):
            dup = [i for i, n in counter.identities.items() if n > 1]
            if dup:
                out.append(f"{len(dup)} identities twice in the {kind}, e.g. {dup[:3]}")
        archived = Counter(canonical(r["payload"]) for r in c.archive.rows)
        if missing := valid - archived:
            out.append(f"{sum(missing.values())} sent readings not archived (or changed), "
                       f"seq e.g. {sorted(orjson.loads(p)['seq'] for p in missing)[:10]}")
        if extra := archived - valid:
            out.append(f"{sum(extra.values())} archived readings never sent as they are, "
                       f"seq e.g. {sorted(orjson.loads(p)['seq'] for p in extra)[:10]}")
        stages = Counter(str(r.get("stage")) for r in c.quarantine.rows)
        if refused := {st: n for st, n in stages.items() if st.startswith("sink:")}:
            out.append(f"sinks refused documents: {refused}")
        rejected = Counter(base64.b64decode(r["data_b64"]) for r in c.quarantine.rows
                           if r.get("stage") != "window"
                           and not str(r.get("stage")).startswith("sink:"))
        if rejected != poison:
            out.append(f"quarantine holds {sum(rejected.values())} rejected records, "
                       f"{len(rejected - poison)} not sent as poison, "
                       f"{len(poison - rejected)} poison missing")
        late = c.late
        if stray := late - set(c.archive.identities):
            out.append(f"{len(stray)} late records not in the archive: {sorted(stray)[:3]}")
        # Redshift's raw table: the archive's identities, once each.
        if c.redshift_raw != Counter(set(c.archive.identities)):
            rs, s3 = set(c.redshift_raw), set(c.archive.identities)
            out.append(f"redshift raw_records: {len(s3 - rs)} missing, {len(rs - s3)} extra, "
                       f"{sum(n - 1 for n in c.redshift_raw.values() if n > 1)} duplicated")
        # Window results: the same content in every sink, and what the archive implies.
        out += result_differences(c.results)[:20]
        out += self._against_archive(c, late)
        return out

    def _against_archive(self, c: Contents, late: set[Identity]) -> list[str]:
        w = self.settings.windows
        expected = expected_results(c.archive.rows, late, w.size_ms, contract_from(self.settings))
        held = {(r.shard, r.start_ms, r.key): r for rs in c.results["s3"].values() for r in rs}
        out = []
        if missing := sorted(set(expected) - set(held)):
            out.append(f"{len(missing)} windows the archive implies have no result, "
                       f"e.g. {missing[:3]}")
        if extra := sorted(set(held) - set(expected)):
            out.append(f"{len(extra)} results hold no archived record, e.g. {extra[:3]}")
        wrong = [(k, held[k], e) for k, e in expected.items() if k in held
                 and not same_content(held[k], e)]
        if wrong:
            out.append(f"{len(wrong)} results differ from the archive, e.g. {wrong[:2]}")
        return out

    def reconcile(self, timeout_s: float = 240) -> Contents:
        """Wait until every sink holds exactly what was sent, equal by content; assert it."""
        assert not self.producers, "finish_producers() first: reconcile needs all it sent"
        deadline = time.monotonic() + timeout_s
        while True:
            c = self.contents()
            problems = self.problems(c)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert problems == [], "\n".join(problems)
        return c


def canonical(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)


def same_content(held: ResultContent, expected: ResultContent) -> bool:
    """Equal, but the sum up to float rounding (the engine may add in another grouping)."""
    return (held.count, held.min, held.max, held.is_final) == (
        expected.count, expected.min, expected.max, expected.is_final) and math.isclose(
        held.sum, expected.sum, rel_tol=1e-9, abs_tol=1e-6)


def wait_until(check: Callable[[], bool], timeout_s: float,
               failure: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, failure if isinstance(failure, str) else failure()
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
