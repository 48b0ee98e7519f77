"""`aetherstream bench processor`: the record processor through the real KCL protocol.

Run: `aetherstream bench processor [--records N] [--configs s3,all,...]`. Not a test: it
prints figures from one run.

Each configuration's records (demo-shaped: consumer/local/producer.py `generate`, 50
devices x 4 metrics, 10 ms apart in event time, 1% poison by default) are turned once into
the daemon's protocol lines (consumer/bench/kcl_messages.py) and fed over pipes, as the
MultiLangDaemon feeds them (consumer/bench/kcl_driver.py), to three processes in turn:
- no-op: an amazon_kclpy processor that checkpoints each batch (the practical floor);
- decode-only: the same plus a base64 decode of every record;
- ours: `python -m consumer.kcl`, with its settings as AETHERSTREAM_* variables, against
  the local stack's real servers (moto S3, dynalite, PostgreSQL, osmem-server).

Settings are the defaults (production flush hints) with the demo's 10 s tumbling windows,
over --config and AETHERSTREAM_*, with the configuration's sinks switched on or off
and the fencing table set as the local stack sets it. The worker id is in
AETHERSTREAM_KCL_WORKER_ID and the lease table (named like the application) holds its
lease, as the daemon leaves them; every accepted checkpoint is written there, as the daemon
writes it.

Each configuration runs --rounds times (3 by default), each round over fresh resources
with the three processors in turn; a processor's row is its median round (CPU seconds of one
and the same run vary by up to a third here), with the rounds' range beside it. Every round
is reconciled.

Per processor: records per CPU-second of its whole process tree (start-up included; the
init column says how much of it was start-up; our bytecode is compiled first, as in the
image), wall seconds, the ratios against the two baselines, and the checkpoints. After each
run the sinks are read back: every record archived or quarantined once, the window results
holding every archived record, Redshift and OpenSearch holding as many; and the last
checkpoint must be the last record sent.
Per configuration also: the CPU each server spent while ours ran and in the few seconds
after it exited (a stand-in that keeps spinning without load shows there), and the sizes
of the S3 objects ours wrote. With --stages, one more run of ours per configuration, its
stages timed (consumer/bench/stages.py): where its CPU went, per record.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import consumer
from consumer.bench import stack_probe as probe
from consumer.bench import stages
from consumer.bench.kcl_driver import Feed, ProcessorFailed, RunResult, drive
from consumer.bench.kcl_messages import (
    SHARD_ID,
    batches,
    initialize_line,
    kinesis_records,
    millis_behind,
    process_records_line,
)
from consumer.bench.stats import per_second, ratio, render_table, size_summary
from consumer.config import Settings, load_settings, to_env, with_overrides
from consumer.local.demo import DEMO_WINDOWS
from consumer.local.producer import ProducerSpec, generate

WORKER_ID = "bench-worker-1"
PROCESSORS = (
    ("no-op", ("consumer.bench.noop_processor",)),
    ("decode-only", ("consumer.bench.decode_processor",)),
    ("ours", ("consumer.kcl",)),
)
# Ours with the stages timed: the shard host runs consumer/bench/stages.py as its child.
STAGED_OURS = ("consumer.kcl", sys.executable, "-m", "consumer.bench.stages")


@dataclass(frozen=True)
class BenchConfig:
    name: str
    title: str
    windows: bool = False
    warehouse: bool = False  # Redshift (PostgreSQL here) and OpenSearch (osmem here)
    kpl: bool = False
    batch: int = 1_000
    # As in issue 12's harness, for every configuration: start-up weighs as it does in a
    # processor that runs for hours. 'all' takes about a minute: the OpenSearch stand-in
    # indexes ~2k docs/s and this workload makes a window result per 5 records.
    records: int = 200_000
    target: float | None = None  # issue 12's target for ours / no-op


CONFIGS = {c.name: c for c in (
    BenchConfig("s3", "S3 archive only (windows, Redshift, OpenSearch off)"),
    BenchConfig("s3-windows", "S3 archive + windows + S3 results", windows=True,
                target=0.65),
    BenchConfig("all", "everything: S3, Redshift (PostgreSQL), OpenSearch (osmem), windows",
                windows=True, warehouse=True, target=0.35),
    BenchConfig("kpl", "KPL-aggregated input (25 per aggregate), S3 + windows",
                windows=True, kpl=True),
    BenchConfig("s3-windows-10k", "S3 + windows, batches of 10,000", windows=True,
                batch=10_000),
)}


@dataclass
class RoundReport:
    """One round of a configuration: each processor once, over fresh resources."""

    runs: dict[str, RunResult] = field(default_factory=dict)
    busy_servers: dict[str, float] = field(default_factory=dict)
    after_servers: dict[str, float] = field(default_factory=dict)  # CPU s once ours is done
    after_seconds: float = 0.0
    sizes: dict[str, list[int]] = field(default_factory=dict)
    lease_checkpoint_ok: bool = False
    holdings: probe.Holdings | None = None

    @property
    def problems(self) -> list[str]:
        ours = self.runs["ours"]
        out = [] if ours.checkpoint_ok else [
            f"last checkpoint {ours.checkpointed}, last record sent {ours.last_sent}"]
        if not self.lease_checkpoint_ok:
            out.append("the lease table's checkpoint is not ours' last")
        return out + (self.holdings.problems(ours.records) if self.holdings else [])


@dataclass
class ConfigReport:
    """A configuration's rounds. This machine's CPU seconds for one and the same run vary
    by up to a third from run to run, so each processor's figure is its median round."""

    config: BenchConfig
    rounds: list[RoundReport] = field(default_factory=list)

    def run(self, name: str) -> RunResult:
        ordered = sorted((r.runs[name] for r in self.rounds), key=lambda run: run.cpu_s)
        return ordered[(len(ordered) - 1) // 2]

    def cpu_range(self, name: str) -> tuple[float, float]:
        cpu = [r.runs[name].cpu_s for r in self.rounds]
        return min(cpu), max(cpu)

    @property
    def shown(self) -> RoundReport:
        """The round of ours' median run: its servers, sizes and holdings are printed."""
        ours = self.run("ours")
        return next(r for r in self.rounds if r.runs["ours"] is ours)

    @property
    def problems(self) -> list[str]:
        return [f"round {i}: {p}" for i, r in enumerate(self.rounds, 1) for p in r.problems]


def build_feed(cfg: BenchConfig, settings: Settings, records: int, devices: int,
               poison_ratio: float, per_aggregate: int) -> Feed:
    spec = ProducerSpec(records=records, devices=devices, poison_ratio=poison_ratio)
    payloads = [(r.partition_key, r.data, cfg.kpl and r.poison is None) for r in generate(spec)]
    kcl = kinesis_records(payloads, spec.start_ms, spec.interval_ms,
                          per_aggregate if cfg.kpl else 1)
    newest = kcl[-1].arrival_ms
    lines = [(process_records_line(b, millis_behind(b, newest)), b[-1].position)
             for b in batches(kcl, cfg.batch)]
    return Feed(initialize_line(SHARD_ID), lines, len(kcl), idle_tail_s(cfg, settings),
                settings.kcl.idle_time_between_reads_ms / 1000)


def idle_tail_s(cfg: BenchConfig, settings: Settings) -> float:
    """How long the caught-up daemon's empty batches must go on for every window to close:
    idle for idle_timeout_ms, the watermark then moves with processing time and must pass
    the last window's end (up to a window beyond the newest event) plus the allowances."""
    w = settings.windows
    if not (cfg.windows and w.idle_timeout_ms):
        return 0.0
    span = w.size_ms + w.gap_ms + w.out_of_orderness_ms + w.allowed_lateness_ms
    return (w.idle_timeout_ms + span + 1_000) / 1000


def config_settings(base: Settings, cfg: BenchConfig, dsn: str, opensearch_url: str,
                    run_dir: Path, label: str | None = None) -> Settings:
    """`label` (default: the configuration's name) names the round's resources: bucket,
    lease table, schema, index prefix and metrics directory."""
    label = label or cfg.name
    app = f"bench-{label}"
    return with_overrides(
        base,
        stream={"name": "bench-stream", "app_name": app},
        kcl={"worker_id": WORKER_ID},
        s3={"bucket": app},
        windows={"enabled": cfg.windows},
        redshift={"enabled": cfg.warehouse, "dsn": dsn, "dialect": "postgres",
                  "schema": app.replace("-", "_")},
        opensearch={"enabled": cfg.warehouse, "endpoint": opensearch_url, "index_prefix": app,
                    "auth": "none"},
        metrics={"multiproc_dir": str(run_dir / "prometheus" / label)},
    )


def processor_env(settings: Settings, aws: dict[str, str]) -> dict[str, str]:
    """What the daemon's child would inherit from the supervisor, and nothing of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AETHERSTREAM_", "AWS_"))}
    env.update(aws)
    env.update(to_env(settings))
    env["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics.multiproc_dir
    # The children import the same code as this process, whichever checkout that is.
    root = str(Path(consumer.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def compile_bytecode() -> None:
    """Compile our package's bytecode, as the production image does at build (Dockerfile).

    Where PYTHONDONTWRITEBYTECODE is set, as on this machine, every processor would otherwise
    compile our sources at start (about 0.2 CPU-s each), a cost production never pays.
    """
    compileall.compile_dir(Path(consumer.__file__).resolve().parent, quiet=1)


class Bench:
    """The local stack and one configuration's resources in it."""

    def __init__(self, base: Settings, run_dir: Path, timeout_s: float,
                 settle_s: float) -> None:
        from consumer.local.emulators import LocalStack

        self.base, self.run_dir = base, run_dir
        self.timeout_s, self.settle_s = timeout_s, settle_s
        self.stack = LocalStack(run_dir)

    def __enter__(self) -> Bench:
        from consumer.local.emulators import boto3_client
        from consumer.local.stack import aws_env

        compile_bytecode()

        endpoints = self.stack.start()
        self.aws = aws_env(endpoints)
        self.s3 = boto3_client("s3", endpoints)
        self.dynamodb = boto3_client("dynamodb", endpoints)
        self.meter = probe.ServerMeter(self.stack.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def run_config(self, cfg: BenchConfig, feed: Feed, rounds: int) -> ConfigReport:
        """`rounds` rounds, each processor once per round in turn, so a slow spell of the
        machine falls on all three alike."""
        return ConfigReport(cfg, [self._round(cfg, feed, f"{cfg.name}-r{i}" if rounds > 1
                                              else cfg.name) for i in range(1, rounds + 1)])

    def _resources(self, cfg: BenchConfig, label: str) -> Settings:
        """Fresh resources named by `label`, and the settings that point at them."""
        from consumer.sinks.migrate import migrate_all

        e = self.stack.endpoints
        settings = config_settings(self.base, cfg, e.postgres_dsn, e.opensearch_url,
                                   self.run_dir, label)
        self.stack.create_bucket(settings.s3.bucket)
        probe.create_lease_table(self.dynamodb, settings.stream.app_name)
        migrate_all(settings)
        return settings

    def _round(self, cfg: BenchConfig, feed: Feed, label: str) -> RoundReport:
        settings = self._resources(cfg, label)
        app = settings.stream.app_name
        report = RoundReport()
        for name, module in PROCESSORS:  # ours last: the servers' figures are its own
            before = self.meter.sample()
            # The baselines keep no windows, so they need no idle tail to close them.
            own_feed = feed if name == "ours" else replace(feed, idle_tail_s=0.0)
            report.runs[name] = self._drive(label, name, module, settings, own_feed)
        report.busy_servers = probe.cpu_delta(before, after := self.meter.sample())
        # A stand-in that keeps spinning once the load has stopped shows here.
        time.sleep(self.settle_s)
        report.after_servers = probe.cpu_delta(after, self.meter.sample())
        report.after_seconds = self.settle_s
        report.lease_checkpoint_ok = (probe.lease_checkpoint(self.dynamodb, app, SHARD_ID)
                                      == report.runs["ours"].checkpointed)
        s = settings.s3
        report.sizes = probe.object_sizes(self.s3, s.bucket, {
            "archive": s.archive_prefix, "quarantine": s.quarantine_prefix,
            "results": s.results_prefix})
        report.holdings = probe.holdings(self.s3, settings)
        return report

    def timed_stages(self, cfg: BenchConfig, feed: Feed) -> tuple[RunResult, dict[str, Any]]:
        """Ours once more, over fresh resources, its stages timed (consumer/bench/stages.py):
        the run and the stages' report."""
        label = f"{cfg.name}-stages"
        settings = self._resources(cfg, label)
        report_path = self.run_dir / f"{label}.json"
        run = self._drive(label, "ours", STAGED_OURS, settings, feed,
                          {stages.STAGES_FILE_ENV: str(report_path)})
        return run, json.loads(report_path.read_text())

    def _drive(self, label: str, name: str, module: Sequence[str], settings: Settings,
               feed: Feed, extra_env: dict[str, str] | None = None) -> RunResult:
        """One processor over the feed, from a fresh lease and empty metrics directory."""
        app = settings.stream.app_name
        shutil.rmtree(settings.metrics.multiproc_dir, ignore_errors=True)
        os.makedirs(settings.metrics.multiproc_dir)
        probe.put_fresh_lease(self.dynamodb, app, SHARD_ID, WORKER_ID)
        return drive(name, [sys.executable, "-m", *module],
                     {**processor_env(settings, self.aws), **(extra_env or {})}, feed,
                     self.run_dir / "logs" / f"{label}-{name}.log", self.timeout_s,
                     lambda p: probe.record_checkpoint(self.dynamodb, app, SHARD_ID, p))


# --- output -------------------------------------------------------------------------------

def rate(run: RunResult) -> float:
    return per_second(run.records, run.cpu_s)


def rate_after_init(run: RunResult) -> float:
    """Without start-up (interpreter, imports, clients): what more records would converge to."""
    return per_second(run.records, run.cpu_s - run.init_cpu_s)


def run_rows(report: ConfigReport) -> list[list[str]]:
    noop, decode = rate(report.run("no-op")), rate(report.run("decode-only"))
    rows = []
    for name, _ in PROCESSORS:
        run, (low, high) = report.run(name), report.cpu_range(name)
        checkpoint = "= last sent" if run.checkpoint_ok else (
            f"{run.checkpointed} != {run.last_sent}, {run.refused_checkpoints} refused")
        rows.append([name, f"{run.records:,}", f"{run.cpu_s:.2f}", f"{low:.2f}-{high:.2f}",
                     f"{run.init_cpu_s:.2f}",
                     f"{rate(run):,.0f}", f"{run.wall_s:.1f}", f"{ratio(rate(run), noop):.3f}",
                     f"{ratio(rate(run), decode):.3f}",
                     f"{run.checkpoint_requests} ({checkpoint})"])
    return rows


def stage_rows(run: RunResult, report: dict[str, Any]) -> list[list[str]]:
    """The stages' CPU, per record and as a share of the record processor's process (the
    shard host's child). An indented stage is part of the one above it; the rest is what the
    unindented ones and start-up leave of the process."""
    process_s, records = float(report["process_cpu_s"]), run.records

    def row(label: str, cpu_s: float, calls: str = "") -> list[str]:
        share = f"{100 * cpu_s / process_s:.1f}%" if process_s > 0 else ""
        return [label, f"{cpu_s:.3f}", f"{cpu_s / records * 1e6:.2f}", share, calls]

    startup_s = float(report["startup_cpu_s"])
    rows = [row("processor process (the host's child)", process_s),
            row("start-up: interpreter, imports, clients", startup_s)]
    top = startup_s
    for label, stage in report["stages"].items():
        cpu_s = float(stage["cpu_s"])
        rows.append(row(label, cpu_s, f"{stage['calls']:,}"))
        top += 0.0 if label.startswith(" ") else cpu_s
    rows.append(row("rest: callbacks' own work, metrics, shutdown", process_s - top))
    rows.append(["shard host (the relay, its start-up included)", f"{run.cpu_s - process_s:.3f}",
                 f"{(run.cpu_s - process_s) / records * 1e6:.2f}", "", ""])
    return rows


def print_stages(cfg: BenchConfig, run: RunResult, report: dict[str, Any]) -> None:
    print(f"\n### {cfg.name}: where ours' CPU went (one more run, stages timed; "
          f"{run.cpu_s:.2f} CPU s for the tree)")
    for line in render_table(("stage", "CPU s", "us per record", "of the processor", "calls"),
                             stage_rows(run, report)):
        print(line)


RUN_HEADER = ("processor", "records", "CPU s", "rounds' CPU s", "init CPU s",
              "records/CPU-s", "wall s",
              "vs no-op", "vs decode", "checkpoints (last)")


def print_config(report: ConfigReport, feed: Feed) -> None:
    cfg = report.config
    tail = (f"; then, for ours, empty batches every {feed.idle_interval_s:.1f} s for "
            f"{feed.idle_tail_s:.1f} s (CPU counted, not in wall s) until every window closed"
            if feed.idle_tail_s else "")
    print(f"\n## {cfg.name}: {cfg.title}; {feed.records:,} records in "
          f"{len(feed.batches)} batches of up to {cfg.batch:,}{tail}; {len(report.rounds)} "
          f"round(s), each processor's median shown")
    for line in render_table(RUN_HEADER, run_rows(report)):
        print(line)
    shown = report.shown
    busy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(shown.busy_servers.items()))
    print(f"servers' CPU s while ours ran: {busy}; "
          f"total {sum(shown.busy_servers.values()):.2f}")
    after = ", ".join(f"{k} {per_second(v, shown.after_seconds):.2f}"
                      for k, v in sorted(shown.after_servers.items()))
    print(f"servers' CPU s per wall s in the {shown.after_seconds:.0f} s after ours exited: "
          f"{after}")
    named = ("archive", "quarantine", "results")
    for kind in (*named, *sorted(set(shown.sizes) - set(named))):
        print(f"S3 {kind}: {size_summary(shown.sizes.get(kind, []))}")
    ours = report.run("ours")
    if ours.orphans or ours.ignored_lines:
        print(f"ours: {ours.orphans} orphaned child processes measured, "
              f"{ours.ignored_lines} non-protocol stdout lines ignored")
    if h := shown.holdings:
        wh = "".join(f", {k} {v:,}" for k, v in h.warehouse.items())
        print(f"sinks hold: archive {h.archived:,}, quarantine {h.quarantined:,}, late "
              f"{h.late:,}, {h.result_ids:,} window results "
              f"({per_second(h.result_ids, ours.records):.3f} per record) holding "
              f"{h.records_in_results:,} records{wh}")
    print("reconciled in every round (checkpoint = last record sent = lease table's; sinks "
          "hold every record once): " + ("; ".join(report.problems) or "yes"))


def print_summary(reports: Sequence[ConfigReport]) -> None:
    print("\n## summary (ours)")
    rows = []
    for r in reports:
        ours, noop = r.run("ours"), r.run("no-op")
        rows.append([r.config.name, f"{ours.records:,}", f"{rate(ours):,.0f}",
                     f"{ratio(rate(ours), rate(noop)):.3f}",
                     f"{r.config.target:.2f}" if r.config.target else "",
                     f"{ratio(rate_after_init(ours), rate_after_init(noop)):.3f}",
                     f"{ratio(rate(ours), rate(r.run('decode-only'))):.3f}",
                     f"{per_second(ours.records, ours.wall_s):,.0f}",
                     f"{sum(r.shown.busy_servers.values()):.2f}",
                     "NO" if r.problems else "yes"])
    for line in render_table(("config", "records", "records/CPU-s", "vs no-op", "target",
                              "vs no-op after init", "vs decode",
                              "records/wall-s", "servers CPU s", "reconciled"), rows):
        print(line)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aetherstream bench processor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, help="records per configuration "
                    "(default: 200,000)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per configuration; each processor's median is shown")
    ap.add_argument("--devices", type=int, default=50, help="the demo's 50 (x 4 metrics)")
    ap.add_argument("--window-ms", type=int, help="tumbling window size (default: the demo's)")
    ap.add_argument("--poison-ratio", type=float, default=0.01)
    ap.add_argument("--per-aggregate", type=int, default=25, help="records per KPL aggregate")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per processor run")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to watch the servers once ours has exited")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (logs, PostgreSQL)")
    ap.add_argument("--stages", action="store_true",
                    help="per configuration, one more run of ours with its stages timed")
    args = ap.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    if (not names or any(n not in CONFIGS for n in names) or (args.records or 1) <= 0
            or args.rounds < 1):
        ap.error(f"--configs must name some of {', '.join(CONFIGS)}; --records and --rounds "
                 f"must be > 0")
    # Production flush hints (objects of about 1 MB); the demo's windows, so the run has many.
    base = with_overrides(settings or load_settings(), windows=DEMO_WINDOWS)
    if args.window_ms:
        base = with_overrides(base, windows={"size_ms": args.window_ms})
    run_dir = Path(tempfile.mkdtemp(prefix="aether-bench-processor-"))
    f = base.flush
    print(f"bench processor: flush hints {f.max_records} records / {f.max_bytes} B / "
          f"{f.max_age_ms} ms, windows {base.windows.kind} {base.windows.size_ms} ms; "
          f"CPU = user + sys of each processor's process tree; run dir {run_dir}")
    failed = False
    reports = []
    try:
        with Bench(base, run_dir, args.timeout, args.settle) as bench:
            for name in names:
                cfg = CONFIGS[name]
                feed = build_feed(cfg, base, args.records or cfg.records, args.devices,
                                  args.poison_ratio, args.per_aggregate)
                reports.append(bench.run_config(cfg, feed, args.rounds))
                print_config(reports[-1], feed)
                if args.stages:
                    print_stages(cfg, *bench.timed_stages(cfg, feed))
                sys.stdout.flush()
    except ProcessorFailed as exc:
        print(f"bench processor: {exc}", file=sys.stderr)
        failed = True
    if reports:
        print_summary(reports)
    ok = not failed and not any(r.problems for r in reports)
    if ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run dir kept: {run_dir}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
