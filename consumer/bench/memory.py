"""`aetherstream bench memory`: the processor's RSS while one sink is down, against its budget.

Run: `aetherstream bench memory [--outage 60] [--sink s3|redshift|opensearch] [--rate R]`.
Not a test: it prints figures from one run (issue 10 item 5).

`python -m consumer.kcl` is driven through the multilang protocol over pipes, as the daemon
drives it (the session of consumer/bench/kcl_driver.py), against the local stack's real
servers, with the settings, lease table and environment `bench processor` gives it
(consumer/bench/processor.py). Records (demo-shaped, consumer/local/producer.py) arrive on
the shard at a steady `--rate` (0: as fast as the processor takes them); the driver polls
like KCL: a full batch (kcl.max_records) while behind, else what has arrived, and after a
batch that was not full it waits kcl.idle_time_between_reads_ms (an empty batch when nothing
arrived). A processRecords call does not return while the processor commits and waits, so
the feed then blocks, as KCL's fetching does.

After `--warmup` seconds one sink's server is stopped for real for `--outage` seconds
(SIGSTOP of its process tree: its sockets still accept, so calls hang until their client
timeouts, then retry), then continued (SIGCONT). Arrivals go on for `--after` seconds more;
then the backlog is delivered, empty batches close every window, and shutdownRequested ends
the run. The RSS of the processor's whole process tree is sampled every 0.5 s throughout.

Printed: peak and median RSS before, during and after the outage, against the processor's
memory budget (ProcessorMemoryMiB: its default in deploy/ecs/template.yaml, 256 MiB, or
`--budget-mib`) and whether the peak is within the budget + 20%; the buffers' own limit
(flush.max_buffer_bytes) and window state's (windows.max_state_bytes). Then the sinks are
read back: every record archived or quarantined once, window results holding every archived
record, and the last checkpoint (also in the lease table) at the last record sent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

import consumer
from consumer.bench import stack_probe as probe
from consumer.bench.kcl_driver import ProcessorFailed
from consumer.bench.kcl_driver import _Session as Session  # the driver's message exchange
from consumer.bench.kcl_messages import (
    SEQUENCE_BASE,
    SEQUENCE_STEP,
    SHARD_ID,
    CheckpointLedger,
    KclRecord,
    initialize_line,
    process_records_line,
    shutdown_requested_line,
)
from consumer.bench.processor import WORKER_ID, BenchConfig, config_settings, processor_env
from consumer.bench.stats import render_table
from consumer.config import Settings, load_settings, with_overrides
from consumer.local.demo import demo_settings
from consumer.local.procs import log_tail
from consumer.local.producer import ProducerSpec, UserRecord, generate
from consumer.records.model import Position

MIB = 1024 * 1024
SAMPLE_S = 0.5
TOLERANCE = 0.20  # the "within the budget plus 20%"
DEFAULT_BUDGET_MIB = 256  # the template's default, if the template is not beside the code
TEMPLATE = Path(consumer.__file__).resolve().parent.parent / "deploy" / "ecs" / "template.yaml"
PHASES = ("before", "during", "after")
UNREACHED_HINTS = {"max_records": 10**9, "max_bytes": 2**50, "max_age_ms": 10**9}
# The server whose process tree is stopped for each sink (stack_probe's names).
SINK_SERVERS = {"s3": "moto", "redshift": "postgres", "opensearch": "osmem"}


# --- pure parts ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    t_s: float  # since the processor was spawned
    rss: int  # bytes, the whole process tree


@dataclass(frozen=True)
class PhaseStats:
    samples: int
    peak: int
    median: int


def phase_of(t_s: float, outage_start_s: float, outage_end_s: float) -> str:
    if t_s < outage_start_s:
        return "before"
    return "during" if t_s < outage_end_s else "after"


def phase_stats(samples: Sequence[Sample], outage_start_s: float,
                outage_end_s: float) -> dict[str, PhaseStats]:
    """Peak and median RSS of each phase that has samples."""
    by_phase: dict[str, list[int]] = {}
    for s in samples:
        by_phase.setdefault(phase_of(s.t_s, outage_start_s, outage_end_s), []).append(s.rss)
    return {p: PhaseStats(len(v), max(v), int(statistics.median(v)))
            for p in PHASES if (v := by_phase.get(p))}


@dataclass(frozen=True)
class Verdict:
    peak: int
    budget: int

    @property
    def ratio(self) -> float:
        return self.peak / self.budget

    @property
    def within(self) -> bool:
        return self.peak <= self.budget * (1 + TOLERANCE)


def arrived(elapsed_s: float, rate: float, feed_s: float) -> int | None:
    """Records that have arrived on the shard by elapsed_s; arrivals stop at feed_s.
    None: unbounded (rate 0 while feeding: the processor takes what it can)."""
    if rate <= 0:
        return None if elapsed_s < feed_s else 0
    return int(min(elapsed_s, feed_s) * rate)


def batch_size(arrived_now: int | None, delivered: int, max_records: int) -> int:
    """What one KCL poll returns: a full batch while behind, else what has arrived."""
    if arrived_now is None:
        return max_records
    return max(0, min(max_records, arrived_now - delivered))


def template_default_mib(text: str) -> int | None:
    """ProcessorMemoryMiB's Default in the template's Parameters (CloudFormation's YAML tags
    make a plain YAML load fail, so the parameter's block is read as text)."""
    match = re.search(r"^  ProcessorMemoryMiB:\n((?:    .*\n|\s*\n)*?)    Default: (\d+)\s*$",
                      text, re.MULTILINE)
    return int(match.group(2)) if match else None


def mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def report_lines(stats: dict[str, PhaseStats], bounds: dict[str, tuple[float, float]],
                 delivered: dict[str, int], verdict: Verdict) -> list[str]:
    rows = [[p, f"{bounds[p][0]:.1f}", f"{bounds[p][1]:.1f}", str(s.samples), mib(s.peak),
             mib(s.median), f"{s.peak / verdict.budget:.2f}", f"{delivered.get(p, 0):,}"]
            for p, s in stats.items()]
    table = render_table(("phase", "from s", "to s", "samples", "peak RSS MiB",
                          "median RSS MiB", "peak / budget", "records delivered"), rows)
    limit = verdict.budget * (1 + TOLERANCE)
    return [*table,
            f"peak RSS {mib(verdict.peak)} MiB / budget {mib(verdict.budget)} MiB = "
            f"{verdict.ratio:.2f}; budget + {TOLERANCE:.0%} = {mib(limit)} MiB: "
            + ("within" if verdict.within else "OVER")]


# --- the run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    sink: str
    warmup_s: float
    outage_s: float
    after_s: float
    rate: float
    timeout_s: float

    @property
    def feed_s(self) -> float:
        return self.warmup_s + self.outage_s + self.after_s


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    outage: tuple[float, float] = (0.0, 0.0)  # when the server was stopped and continued
    delivered_at: list[tuple[float, int]] = field(default_factory=list)  # (t, records)
    longest_call_s: float = 0.0
    records: int = 0
    end_s: float = 0.0
    ledger: CheckpointLedger = field(default_factory=CheckpointLedger)
    last_sent: Position | None = None

    def delivered_by_phase(self) -> dict[str, int]:
        out = dict.fromkeys(PHASES, 0)
        for t, n in self.delivered_at:
            out[phase_of(t, *self.outage)] += n
        return out


class Sampler(threading.Thread):
    """RSS of a process and its descendants every SAMPLE_S until stopped or gone."""

    def __init__(self, pid: int, t0: float, out: list[Sample]) -> None:
        super().__init__(daemon=True)
        self.proc, self.t0, self.out = psutil.Process(pid), t0, out
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                members = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = 0
            for p in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    rss += p.memory_info().rss
            self.out.append(Sample(time.monotonic() - self.t0, rss))
            self.done.wait(SAMPLE_S)


class Outage(threading.Thread):
    """Stop one server's process tree at start_s, continue it outage_s later."""

    def __init__(self, root: int, t0: float, start_s: float, outage_s: float,
                 run: Run) -> None:
        super().__init__(daemon=True)
        self.root, self.t0, self.start_s, self.outage_s, self.run_ = (
            root, t0, start_s, outage_s, run)
        self.cancel = threading.Event()
        self.stopped: list[int] = []

    def run(self) -> None:
        if self.cancel.wait(max(0.0, self.t0 + self.start_s - time.monotonic())):
            return
        # The whole tree, not the process group: PostgreSQL's backends each call setsid(),
        # so stopping the postmaster's group alone leaves open connections answering.
        root = psutil.Process(self.root)
        self.stopped = [self.root, *(p.pid for p in root.children(recursive=True))]
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        began = time.monotonic() - self.t0
        self.cancel.wait(self.outage_s)
        self.resume()
        self.run_.outage = (began, time.monotonic() - self.t0)

    def resume(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped = []


def kcl_records(user: Iterator[UserRecord], first: int, n: int, arrival_ms: int
                ) -> list[KclRecord]:
    """The next n records with the sequence numbers a shard would give them."""
    return [KclRecord(r.data, r.partition_key,
                      Position(SEQUENCE_BASE + (first + k + 1) * SEQUENCE_STEP, 0), arrival_ms)
            for k, r in zip(range(n), user, strict=False)]


def feed(session: Session, run: Run, plan: Plan, settings: Settings, t0: float,
         user: Iterator[UserRecord], idle_tail_s: float) -> None:
    idle_s = settings.kcl.idle_time_between_reads_ms / 1000
    epoch0 = time.time() - (time.monotonic() - t0)  # wall clock at t0: arrivals count from it
    while True:
        elapsed = time.monotonic() - t0
        n = batch_size(arrived(elapsed, plan.rate, plan.feed_s), run.records,
                       settings.kcl.max_records)
        if n == 0 and elapsed >= plan.feed_s:
            break
        if plan.rate > 0:  # the last record's arrival on the shard, and the newest's
            last_ms = int((epoch0 + (run.records + n) / plan.rate) * 1000)
        else:
            last_ms = int(time.time() * 1000)
        batch = kcl_records(user, run.records, n, last_ms)
        behind = max(0, int(time.time() * 1000) - last_ms) if batch else 0
        if batch:
            run.ledger.deliver(batch[-1].position)
            run.last_sent = batch[-1].position
        started = time.monotonic()
        session.exchange(process_records_line(batch, behind), "processRecords")
        run.longest_call_s = max(run.longest_call_s, time.monotonic() - started)
        run.records += len(batch)
        run.delivered_at.append((started - t0, len(batch)))
        if n < settings.kcl.max_records:
            time.sleep(idle_s)
    ended = time.monotonic()
    while time.monotonic() - ended < idle_tail_s:  # caught up: idle windows close
        time.sleep(idle_s)
        session.exchange(process_records_line([], 0), "processRecords")


class MemoryBench:
    def __init__(self, base: Settings, run_dir: Path, warehouse: bool) -> None:
        from consumer.local.emulators import LocalStack

        self.base, self.run_dir = base, run_dir
        self.cfg = BenchConfig("memory", "memory under a sink outage", windows=True,
                               warehouse=warehouse)
        self.stack = LocalStack(run_dir)

    def __enter__(self) -> MemoryBench:
        from consumer.local.emulators import boto3_client
        from consumer.local.stack import aws_env
        from consumer.sinks.migrate import migrate_all

        e = self.stack.start()
        self.aws = aws_env(e)
        self.s3 = boto3_client("s3", e)
        self.dynamodb = boto3_client("dynamodb", e)
        self.settings = config_settings(self.base, self.cfg, e.postgres_dsn, e.opensearch_url,
                                        self.run_dir)
        app = self.settings.stream.app_name
        self.stack.create_bucket(self.settings.s3.bucket)
        probe.create_lease_table(self.dynamodb, app)
        migrate_all(self.settings)
        os.makedirs(self.settings.metrics.multiproc_dir, exist_ok=True)
        probe.put_fresh_lease(self.dynamodb, app, SHARD_ID, WORKER_ID)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    def server_pid(self, name: str) -> int:
        for pid in self.stack.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if probe.server_name(psutil.Process(pid).cmdline()) == name:
                    return pid
        raise RuntimeError(f"no {name} server in the local stack")

    def run(self, plan: Plan, devices: int, poison_ratio: float, idle_tail_s: float) -> Run:
        s = self.settings
        log_path = self.run_dir / "logs" / "memory-ours.log"
        env = processor_env(s, self.aws)
        user = generate(ProducerSpec(records=10**9, devices=devices, poison_ratio=poison_ratio))
        run = Run()
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "consumer.kcl"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    env=env, start_new_session=True)
        t0 = time.monotonic()
        sampler = Sampler(proc.pid, t0, run.samples)
        outage = Outage(self.server_pid(SINK_SERVERS[plan.sink]), t0, plan.warmup_s,
                        plan.outage_s, run)
        watchdog = threading.Timer(plan.timeout_s, _kill_group, (proc.pid,))
        for thread in (sampler, outage, watchdog):
            thread.start()
        app = s.stream.app_name
        session = Session(proc, run.ledger,
                          lambda p: probe.record_checkpoint(self.dynamodb, app, SHARD_ID, p))
        try:
            session.exchange(initialize_line(SHARD_ID), "initialize")
            feed(session, run, plan, s, t0, user, idle_tail_s)
            session.exchange(shutdown_requested_line(), "shutdownRequested")
            assert proc.stdin is not None
            proc.stdin.close()
            if (code := proc.wait()) != 0:
                raise ProcessorFailed(f"exited with {code} after shutdownRequested")
        except (ProcessorFailed, OSError) as exc:
            raise ProcessorFailed(f"ours: {exc}; its log {log_path}:\n{log_tail(log_path)}"
                                  ) from exc
        finally:
            outage.cancel.set()
            outage.join()
            outage.resume()  # never leave a server stopped
            watchdog.cancel()
            sampler.done.set()
            sampler.join()
            _kill_group(proc.pid)
            if proc.returncode is None:
                proc.wait()
        run.end_s = time.monotonic() - t0
        return run


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- output -------------------------------------------------------------------------------

def budget_bytes(arg_mib: int | None) -> tuple[int, str]:
    if arg_mib:
        return arg_mib * MIB, "--budget-mib"
    found = template_default_mib(TEMPLATE.read_text()) if TEMPLATE.exists() else None
    if found is None:
        return DEFAULT_BUDGET_MIB * MIB, "the template's default (template not found)"
    return found * MIB, f"ProcessorMemoryMiB default in {TEMPLATE.relative_to(TEMPLATE.parents[2])}"


def print_run(run: Run, plan: Plan, settings: Settings, budget: int, source: str,
              holdings: probe.Holdings, problems: list[str]) -> bool:
    start, end = run.outage
    bounds = {"before": (0.0, start), "during": (start, end), "after": (end, run.end_s)}
    stats = phase_stats(run.samples, start, end)
    verdict = Verdict(max(s.rss for s in run.samples), budget)
    print(f"\n{run.records:,} records in {run.end_s:.1f} s; {plan.sink} "
          f"({SINK_SERVERS[plan.sink]}) stopped from {start:.1f} s to {end:.1f} s; the "
          f"longest processRecords call took {run.longest_call_s:.1f} s")
    for line in report_lines(stats, bounds, run.delivered_by_phase(), verdict):
        print(line)
    print(f"budget: {mib(budget)} MiB ({source}); the processor's own limits: "
          f"flush.max_buffer_bytes {mib(settings.flush.max_buffer_bytes)} MiB, "
          f"windows.max_state_bytes {mib(settings.windows.max_state_bytes)} MiB")
    h = holdings
    wh = "".join(f", {k} {v:,}" for k, v in h.warehouse.items())
    print(f"sinks hold: archive {h.archived:,}, quarantine {h.quarantined:,}, late {h.late:,}, "
          f"{h.result_ids:,} window results holding {h.records_in_results:,} records{wh}")
    print("reconciled (checkpoint = last record sent = lease table's; sinks hold every "
          "record once): " + ("; ".join(problems) or "yes"))
    return verdict.within


def reconcile(bench: MemoryBench, run: Run) -> tuple[probe.Holdings, list[str]]:
    s = bench.settings
    out = []
    if run.ledger.checkpointed != run.last_sent or run.ledger.refused:
        out.append(f"last checkpoint {run.ledger.checkpointed}, last record sent "
                   f"{run.last_sent}, {run.ledger.refused} refused")
    if probe.lease_checkpoint(bench.dynamodb, s.stream.app_name, SHARD_ID) != run.last_sent:
        out.append("the lease table's checkpoint is not the last record sent")
    h = probe.holdings(bench.s3, s)
    return h, out + h.problems(run.records)


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aetherstream bench memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sink", choices=sorted(SINK_SERVERS), default="s3",
                    help="the sink whose server is stopped (redshift, opensearch: both on)")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the sink is down")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the outage")
    ap.add_argument("--after", type=float, default=30.0,
                    help="seconds records keep arriving after the outage")
    ap.add_argument("--rate", type=float, default=2000.0,
                    help="records/s arriving on the shard (0: as fast as it takes them)")
    ap.add_argument("--flush", choices=("demo", "budget"), default="demo",
                    help="demo: the demo's hints (1 s age); budget: hints out of reach, so "
                    "only flush.max_buffer_bytes starts a flush and the outage meets a full "
                    "buffer")
    ap.add_argument("--warehouse", action="store_true",
                    help="also Redshift (PostgreSQL) and OpenSearch (osmem)")
    ap.add_argument("--devices", type=int, default=50, help="the demo's 50 (x 4 metrics)")
    ap.add_argument("--poison-ratio", type=float, default=0.01)
    ap.add_argument("--budget-mib", type=int, help="default: the template's ProcessorMemoryMiB")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (logs, PostgreSQL)")
    args = ap.parse_args(argv)
    if min(args.outage, args.warmup, args.after, args.rate) < 0 or args.devices <= 0:
        ap.error("durations and --rate must be >= 0, --devices > 0")
    plan = Plan(args.sink, args.warmup, args.outage, args.after, args.rate, args.timeout)
    base = demo_settings(settings or load_settings())
    if args.flush == "budget":
        base = with_overrides(base, flush=UNREACHED_HINTS)
    budget, source = budget_bytes(args.budget_mib)
    run_dir = Path(tempfile.mkdtemp(prefix="aether-bench-memory-"))
    f = base.flush
    print(f"bench memory: {plan.sink} down {plan.outage_s:.0f} s (SIGSTOP) after "
          f"{plan.warmup_s:.0f} s, records arriving at "
          + (f"{plan.rate:,.0f}/s" if plan.rate else "the processor's pace")
          + f" for {plan.feed_s:.0f} s; RSS of the processor's process tree every "
          f"{SAMPLE_S} s; flush hints {f.max_records} records / {f.max_bytes} B / "
          f"{f.max_age_ms} ms; run dir {run_dir}")
    ok = False
    try:
        with MemoryBench(base, run_dir, args.warehouse or args.sink != "s3") as bench:
            tail = idle_tail(bench.settings)
            run = bench.run(plan, args.devices, args.poison_ratio, tail)
            holdings, problems = reconcile(bench, run)
            within = print_run(run, plan, bench.settings, budget, source, holdings, problems)
            ok = within and not problems
    except ProcessorFailed as exc:
        print(f"bench memory: {exc}", file=sys.stderr)
    if ok and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        print(f"run dir kept: {run_dir}")
    return 0 if ok else 1


def idle_tail(settings: Settings) -> float:
    """Empty batches long enough for every window to close (as `bench processor`)."""
    from consumer.bench.processor import idle_tail_s

    return idle_tail_s(BenchConfig("memory", "", windows=True), settings)


if __name__ == "__main__":
    raise SystemExit(main())
