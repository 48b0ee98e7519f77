"""`aetherstream demo`: local up, produce, wait until every record is accounted for, report.

S3 is the ground truth: the demo reads back every archive and quarantine object and counts
record identities (shard, sequence, sub-sequence), so a duplicate or a loss shows.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.config import Settings, with_overrides
from consumer.local import stackfile
from consumer.local.emulators import boto3_client
from consumer.local.producer import ProduceReport, ProducerSpec, produce
from consumer.local.reconcile import (
    ObjectCounter,
    opensearch_count,
    redshift_counts,
    s3_result_rows,
)
from consumer.local.stack import LocalRun

log = logging.getLogger(__name__)


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll_s)
    return check()


# The demo's event time spans about a minute per 5k records: short windows, so it has many.
DEMO_WINDOWS = {"size_ms": 10_000, "idle_timeout_ms": 2_000}


def demo_settings(settings: Settings) -> Settings:
    """Short windows and flushes, so results show within seconds."""
    return with_overrides(settings, flush={"max_age_ms": 1000}, windows=DEMO_WINDOWS)


# What a run dir keeps between runs: PostgreSQL's data and the worker's files. Everything else
# (stream, tables, buckets, indices) lives in the emulators' memory and dies with them.
STATE_DIRS = ("postgres", "worker")


class RunDirBusy(RuntimeError):
    """A local stack is running in the demo's run dir; wiping it would pull its data away."""


def fresh_run_dir(run_dir: Path) -> None:
    """Every demo starts from clean state, so a repeated demo reconciles like the first."""
    try:
        live = stackfile.read(run_dir)
    except stackfile.NoRunningStack:
        live = None
    if live is not None:
        raise RunDirBusy(f"a local stack (pid {live['pid']}) is running in {run_dir}; "
                           f"stop it or pass another --run-dir")
    for name in STATE_DIRS:
        shutil.rmtree(run_dir / name, ignore_errors=True)


@dataclass
class DemoRun:
    run: LocalRun
    archive: ObjectCounter
    quarantine: ObjectCounter
    produced: ProduceReport = field(default_factory=ProduceReport)

    def accounted(self) -> int:
        self.archive.refresh()
        self.quarantine.refresh()
        return self.archive.distinct + self.quarantine.distinct_where(stage_is_window=False)

    def windows_reconciled(self) -> tuple[int, int]:
        """(records counted in final S3 window results, records late)."""
        s = self.run.settings.s3
        rows = s3_result_rows(self.archive.s3, s.bucket, s.results_prefix)
        return sum(r["count"] for r in rows), self.quarantine.distinct_where(stage_is_window=True)


def run_demo(settings: Settings, run_dir: Path, records: int, timeout_s: float = 300,
             poison_ratio: float = 0.0) -> dict[str, Any]:
    started = time.monotonic()
    fresh_run_dir(run_dir)
    run = LocalRun(demo_settings(settings), run_dir)
    out: dict[str, Any] = {}
    try:
        endpoints = run.start_stack()
        s3, bucket = boto3_client("s3", endpoints), run.settings.s3.bucket
        demo = DemoRun(run, ObjectCounter(s3, bucket, run.settings.s3.archive_prefix),
                       ObjectCounter(s3, bucket, run.settings.s3.quarantine_prefix))
        spec = ProducerSpec(records=records, devices=50, kpl_fraction=0.5,
                            poison_ratio=poison_ratio)
        # The records wait on the stream before the consumer starts, as they do for a
        # consumer deployed beside live producers. Producing meanwhile took the same 2 cores
        # as the JVM and the four processors starting (first record 16-18 s, not 10-12 s);
        # in production the producers run elsewhere.
        demo.produced = produce(boto3_client("kinesis", endpoints), run.settings.stream.name,
                                spec)
        supervisor = run.start_supervisor()
        info = run.describe()  # with the supervisor's metrics URL
        assert supervisor.daemon is not None
        daemon_started = supervisor.daemon.started_at
        wait_until(lambda: demo.accounted() > 0, timeout_s, poll_s=0.2)
        first_seen = time.monotonic()
        complete = wait_until(lambda: demo.accounted() >= records, timeout_s)
        windows_done = wait_until(lambda: sum(demo.windows_reconciled()) >= demo.archive.distinct,
                                  60, poll_s=1.0)
        out = summarize(demo, info, complete and windows_done)
        out.update(first_record_s=round(first_seen - daemon_started, 1),
                   consume_s=round(time.monotonic() - first_seen, 1),
                   leases_prepared=run.leases_prepared)
    finally:
        stop_started = time.monotonic()
        run.stop()
    out.update(seconds=round(time.monotonic() - started, 1),
               shutdown_s=round(time.monotonic() - stop_started, 1))
    return out


def summarize(demo: DemoRun, info: dict[str, Any], complete: bool) -> dict[str, Any]:
    settings = demo.run.settings
    in_windows, late = demo.windows_reconciled()
    redshift = redshift_counts(settings.redshift.connect_dsn(), settings.redshift.schema)
    rs_raw, rs_results = redshift["raw_records"], redshift["window_results"]
    s3_results = s3_result_rows(demo.archive.s3, settings.s3.bucket, settings.s3.results_prefix)
    return {
        "produced": demo.produced.user_records,
        "kinesis_records": demo.produced.kinesis_records,
        "kpl_aggregated": demo.produced.aggregated_user_records,
        "archived": demo.archive.distinct,
        "quarantined": demo.quarantine.distinct_where(stage_is_window=False),
        "late": late,
        "duplicates": (demo.archive.duplicates + demo.quarantine.duplicates + rs_raw.duplicates
                       + rs_results.duplicates),
        "complete": complete,
        "quarantine_reasons": dict(Counter(r["reason"] for r in demo.quarantine.rows)),
        "s3_results": len(s3_results),
        "records_in_windows": in_windows,
        "redshift_rows": rs_raw.distinct,
        "redshift_results": rs_results.distinct,
        "opensearch_docs": opensearch_count(settings.opensearch.endpoint,
                                            settings.opensearch.index_prefix),
        "produce_s": round(demo.produced.seconds, 1),
        "metrics_url": info.get("metrics_url", ""),
        "run_dir": info.get("run_dir", ""),
    }


def reconciled(s: dict[str, Any]) -> bool:
    return bool(
        s["complete"] and s["duplicates"] == 0
        and s["archived"] + s["quarantined"] == s["produced"]
        and s["records_in_windows"] + s["late"] == s["archived"]
        and s["redshift_rows"] == s["archived"]
        and s["redshift_results"] == s["s3_results"] == s["opensearch_docs"]
    )


def human_summary(s: dict[str, Any]) -> str:
    rate = s["produced"] / s["consume_s"] if s.get("consume_s") else 0.0
    return "\n".join([
        f"AetherStream demo {'OK: every record reconciled' if reconciled(s) else 'INCOMPLETE'}",
        f"  produced      {s['produced']:>7}  ({s['kinesis_records']} Kinesis records; "
        f"{s['kpl_aggregated']} user records inside KPL aggregates)",
        f"  S3 archive    {s['archived']:>7}  raw records",
        f"  quarantined   {s['quarantined']:>7}  {s['quarantine_reasons']}",
        f"  windows       {s['records_in_windows']:>7}  records in {s['s3_results']} final "
        f"window results; {s['late']} late",
        f"  Redshift      {s['redshift_rows']:>7}  raw rows, {s['redshift_results']} window "
        f"results (PostgreSQL stand-in)",
        f"  OpenSearch    {s['opensearch_docs']:>7}  window-result documents (osmem stand-in)",
        f"  duplicates    {s['duplicates']:>7}",
        f"  time          {s['seconds']} s in all: first record archived "
        f"{s.get('first_record_s')} s after the daemon started ({_lease_note(s)}), "
        f"then {s.get('consume_s')} s to consume ({rate:.0f} records/s); "
        f"shutdown {s['shutdown_s']} s",
        f"  metrics       {s['metrics_url']} (while it ran)",
        f"  logs          {s['run_dir']}",
    ])


def _lease_note(s: dict[str, Any]) -> str:
    if s.get("leases_prepared"):
        return f"{s['leases_prepared']} leases prepared, so KCL skips its 1-30 s wait"
    return "KCL waits 1-30 s on an empty lease table"
