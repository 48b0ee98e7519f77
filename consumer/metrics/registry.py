"""Every AetherStream Prometheus metric, defined once, for multiprocess collection.

How the processes share metrics
-------------------------------
Each shard processor (``python -m consumer.kcl``) is a separate process started by the Java
MultiLangDaemon. prometheus-client's multiprocess mode lets every process write its values to
its own mmap file in ``PROMETHEUS_MULTIPROC_DIR``; the supervisor merges them on scrape.

prometheus-client decides the mode once, when ``prometheus_client`` is first imported, by
looking at ``PROMETHEUS_MULTIPROC_DIR``. Therefore:

1. The supervisor calls :func:`configure_multiprocess` *before* it starts the Java daemon. It
   empties the directory (stale files from a previous run would be merged otherwise) and puts
   the variable into ``os.environ``. Java's ProcessBuilder inherits the environment, so every
   processor child starts with the variable already set and any import order is fine there.
2. A processor calls :func:`assert_multiprocess_mode` at start-up: it fails loudly if the
   variable is set but ``prometheus_client`` was imported before it was (values would then
   silently stay in process memory and never reach ``/metrics``).
3. When a processor exits, the supervisor (or :func:`reap_dead_processes`, which the server
   runs before each scrape) calls :func:`mark_process_dead` so its ``live*`` gauges vanish.

Without the variable (unit tests of other modules) the metrics work in-process and can be read
with ``REGISTRY.get_sample_value(...)``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric, values
from prometheus_client import multiprocess as _mp
from prometheus_client.registry import Collector

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

# Our own registry, not the global default, so other libraries' metrics never leak into
# /metrics and tests can read values back without global state from elsewhere.
REGISTRY = CollectorRegistry(auto_describe=True)

_SHARD = ("shard",)
_SINK = ("sink",)

# --- ingest -----------------------------------------------------------------------------------
KINESIS_RECORDS_RECEIVED = Counter(
    "aetherstream_kinesis_records_received_total",
    "Distinct Kinesis records (distinct sequence numbers) received.",
    _SHARD, registry=REGISTRY,
)
USER_RECORDS_RECEIVED = Counter(
    "aetherstream_user_records_received_total",
    "User records received after KPL deaggregation.",
    _SHARD, registry=REGISTRY,
)
RECEIVED_BYTES = Counter(
    "aetherstream_received_bytes_total",
    "Payload bytes of user records received.",
    _SHARD, registry=REGISTRY,
)
# Per-shard gauges use live* modes: when a shard process exits its files are removed by
# mark_process_dead, so a shard that moved to another worker stops being reported here.
# "mostrecent" rather than "sum" because during a lease hand-off two processes may briefly
# report the same shard and only the newest value is true.
MILLIS_BEHIND_LATEST = Gauge(
    "aetherstream_millis_behind_latest",
    "MillisBehindLatest of the newest GetRecords batch.",
    _SHARD, multiprocess_mode="livemostrecent", registry=REGISTRY,
)
WATERMARK_LAG_SECONDS = Gauge(
    "aetherstream_watermark_lag_seconds",
    "Wall clock minus the shard's event-time watermark.",
    _SHARD, multiprocess_mode="livemostrecent", registry=REGISTRY,
)

# --- windows ----------------------------------------------------------------------------------
OPEN_WINDOWS = Gauge(
    "aetherstream_open_windows",
    "Windows currently open.",
    _SHARD, multiprocess_mode="livemostrecent", registry=REGISTRY,
)
WINDOW_STATE_BYTES = Gauge(
    "aetherstream_window_state_bytes",
    "Approximate bytes held by open window state.",
    _SHARD, multiprocess_mode="livemostrecent", registry=REGISTRY,
)
WINDOW_RESULTS_EMITTED = Counter(
    "aetherstream_window_results_emitted_total",
    "Window results emitted to the sinks.",
    _SHARD, registry=REGISTRY,
)
LATE_RECORDS = Counter(
    "aetherstream_late_records_total",
    "Records that arrived after their window closed.",
    _SHARD, registry=REGISTRY,
)

# --- quarantine / archive ---------------------------------------------------------------------
RECORDS_QUARANTINED = Counter(
    "aetherstream_records_quarantined_total",
    "Records written to quarantine, by reason.",
    ("shard", "reason"), registry=REGISTRY,
)
RECORDS_ARCHIVED = Counter(
    "aetherstream_records_archived_total",
    "Raw records archived to S3.",
    _SHARD, registry=REGISTRY,
)

# --- schema drift -----------------------------------------------------------------------------
# Field names come from the records: the first MAX_DRIFT_FIELDS distinct ones of a process get
# their own label, later ones count under "_other", so a producer sending random keys cannot
# grow the series without bound (per process; CloudWatch bills each series as a metric).
SCHEMA_DRIFT = Counter(
    "aetherstream_schema_drift_total",
    "Records drifting from their declared schema version, by field and kind "
    "(unknown_field, type_change).",
    ("field", "kind"), registry=REGISTRY,
)
MAX_DRIFT_FIELDS = 50
MAX_DRIFT_LABEL_CHARS = 100
DRIFT_OTHER = "_other"
_drift_fields: set[str] = set()
_drift_lock = threading.Lock()
# --- transform --------------------------------------------------------------------------------
RECORDS_FILTERED = Counter(
    "aetherstream_records_filtered_total",
    "Records left out: by a transform filter (filter = its step name), or by a declared "
    "aggregation that could not read them or filtered them (aggregation:<name>) or found them "
    "late (late:<name>), which stay archived.",
    ("shard", "filter"), registry=REGISTRY,
)
LOOKUP_REFRESH_FAILURES = Counter(
    "aetherstream_lookup_refresh_failures_total",
    "Lookup table refreshes that failed (the table already loaded is kept), by lookup step.",
    ("step",), registry=REGISTRY,
)

# --- sinks ------------------------------------------------------------------------------------
SINK_BATCHES = Counter(
    "aetherstream_sink_batches_total",
    "Sink batches finished, by outcome (ok, error, ...).",
    ("sink", "outcome"), registry=REGISTRY,
)
SINK_RECORDS = Counter(
    "aetherstream_sink_records_total",
    "Records durably written by a sink.",
    _SINK, registry=REGISTRY,
)
SINK_FLUSH_DURATION_SECONDS = Histogram(
    "aetherstream_sink_flush_duration_seconds",
    "Wall time of one sink flush, including retries.",
    _SINK, registry=REGISTRY,
    # Flushes are network writes of whole batches: milliseconds to a minute.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
SINK_RETRIES = Counter(
    "aetherstream_sink_retries_total",
    "Sink write attempts that were retried.",
    _SINK, registry=REGISTRY,
)
SINK_BUFFER_BYTES = Gauge(
    "aetherstream_sink_buffer_bytes",
    "Bytes buffered for a sink and not yet durable.",
    ("sink", "shard"), multiprocess_mode="livemostrecent", registry=REGISTRY,
)

# --- checkpoints / leases ---------------------------------------------------------------------
CHECKPOINTS = Counter(
    "aetherstream_checkpoints_total",
    "Checkpoint attempts, by outcome.",
    ("shard", "outcome"), registry=REGISTRY,
)
CHECKPOINT_LAG_RECORDS = Gauge(
    "aetherstream_checkpoint_lag_records",
    "User records received but not yet covered by a checkpoint.",
    _SHARD, multiprocess_mode="livemostrecent", registry=REGISTRY,
)
FENCED = Counter(
    "aetherstream_fenced_total",
    "Times a processor found that another tenure owns its shard and stopped writing.",
    _SHARD, registry=REGISTRY,
)
# livesum: each processor holds at most one lease and sets 1 while it does; the sum over live
# processes is the number of leases this worker holds.
LEASES_HELD = Gauge(
    "aetherstream_leases_held",
    "Shard leases held by this worker's processors.",
    multiprocess_mode="livesum", registry=REGISTRY,
)
PROCESS_RECORDS_DURATION_SECONDS = Histogram(
    "aetherstream_process_records_duration_seconds",
    "Wall time of one processRecords call.",
    _SHARD, registry=REGISTRY,
)
# livemax: a hung processor keeps its old timestamp (so readiness sees it age), while an
# exited one disappears instead of looking stale forever.
PROCESSOR_HEARTBEAT = Gauge(
    "aetherstream_processor_heartbeat_timestamp_seconds",
    "Unix time of the processor's last sign of life.",
    _SHARD, multiprocess_mode="livemax", registry=REGISTRY,
)
# Written by the shard host (consumer/kcl/host.py) when its record processor dies. Not live*:
# the host exits once KCL takes the lease away, and the failure must outlast it. The gauge
# keeps the newest failure time per shard and reason, which /readyz reads.
PROCESSOR_FAILURES = Counter(
    "aetherstream_processor_failures_total",
    "Record processors that died (crash, signal, fatal error), by shard and reason.",
    ("shard", "reason"), registry=REGISTRY,
)
PROCESSOR_LAST_FAILURE = Gauge(
    "aetherstream_processor_last_failure_timestamp_seconds",
    "Unix time of the shard's last processor failure, by reason.",
    ("shard", "reason"), multiprocess_mode="mostrecent", registry=REGISTRY,
)

METRIC_NAMES: tuple[str, ...] = (
    "aetherstream_kinesis_records_received_total",
    "aetherstream_user_records_received_total",
    "aetherstream_received_bytes_total",
    "aetherstream_millis_behind_latest",
    "aetherstream_watermark_lag_seconds",
    "aetherstream_open_windows",
    "aetherstream_window_state_bytes",
    "aetherstream_window_results_emitted_total",
    "aetherstream_late_records_total",
    "aetherstream_records_quarantined_total",
    "aetherstream_records_archived_total",
    "aetherstream_schema_drift_total",
    "aetherstream_records_filtered_total",
    "aetherstream_lookup_refresh_failures_total",
    "aetherstream_sink_batches_total",
    "aetherstream_sink_records_total",
    "aetherstream_sink_flush_duration_seconds",
    "aetherstream_sink_retries_total",
    "aetherstream_sink_buffer_bytes",
    "aetherstream_checkpoints_total",
    "aetherstream_checkpoint_lag_records",
    "aetherstream_fenced_total",
    "aetherstream_leases_held",
    "aetherstream_process_records_duration_seconds",
    "aetherstream_processor_heartbeat_timestamp_seconds",
    "aetherstream_processor_failures_total",
    "aetherstream_processor_last_failure_timestamp_seconds",
)
"""Names as they appear in the exposition (counters with ``_total``; histograms by base name)."""

HISTOGRAM_NAMES: tuple[str, ...] = (
    "aetherstream_sink_flush_duration_seconds",
    "aetherstream_process_records_duration_seconds",
)

SAMPLE_NAMES: frozenset[str] = frozenset(METRIC_NAMES) | frozenset(
    h + suffix for h in HISTOGRAM_NAMES for suffix in ("_bucket", "_sum", "_count")
)
"""Every sample name /metrics can expose: what a dashboard or alarm may reference."""


# --- process lifecycle ------------------------------------------------------------------------
def configure_multiprocess(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Prepare ``directory`` for a fresh run and export it to children. Supervisor only.

    Call before starting the daemon. Returns the environment entry to pass to a child that is
    started with an explicit ``env``.
    """
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # Files of a previous run would be merged into this run's counters otherwise.
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[ENV_VAR] = str(path)
    return {ENV_VAR: str(path)}


def is_multiprocess() -> bool:
    """True when this process writes its metrics to mmap files (multiprocess mode)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def assert_multiprocess_mode() -> None:
    """Fail if the env var is set but prometheus_client was imported before it was.

    A processor calls this first thing; without it, values would stay in process memory.
    """
    if os.environ.get(ENV_VAR) and not is_multiprocess():
        raise RuntimeError(
            f"{ENV_VAR} is set but prometheus_client was imported before it; "
            "set the variable before the first import (the supervisor exports it to children)"
        )


def mark_process_dead(pid: int, directory: str | os.PathLike[str] | None = None) -> None:
    """Drop the live* gauge files of an exited process (its counters are kept)."""
    path = str(directory) if directory is not None else os.environ.get(ENV_VAR)
    if path:
        _mp.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


_PID_IN_FILE = re.compile(r"_(\d+)\.db$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_REAP_LOCK = threading.Lock()


def reap_dead_processes(directory: str | os.PathLike[str]) -> list[int]:
    """mark_process_dead for every pid with live gauge files that no longer runs.

    Processors are the daemon's children, not the supervisor's, so the supervisor cannot
    wait() on them; checking the pids found in the files is the reliable way to notice exits.
    The HTTP server and the CloudWatch mirror both call this, hence the lock.
    """
    with _REAP_LOCK:
        pids: set[int] = set()
        for name in glob.glob(os.path.join(str(directory), "gauge_live*_*.db")):
            match = _PID_IN_FILE.search(name)
            if match:
                pids.add(int(match.group(1)))
        dead = sorted(pid for pid in pids if pid != os.getpid() and not _pid_alive(pid))
        for pid in dead:
            with contextlib.suppress(FileNotFoundError):
                _mp.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        return dead


class _MergingCollector(Collector):
    """MultiProcessCollector that tolerates a file vanishing mid-merge (a reap in between)
    and one a starting process has created but not yet sized: prometheus_client opens the
    file, then truncates it to its first size, and a scrape in between failed with
    struct.error (a 500 from /metrics). An empty file holds no value yet."""

    def __init__(self, directory: str) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        for attempt in range(3):
            try:
                files = [f for f in glob.glob(os.path.join(self._directory, "*.db"))
                         if os.path.getsize(f) > 0]
                return list(_mp.MultiProcessCollector.merge(files, accumulate=True))  # type: ignore[no-untyped-call]
            except FileNotFoundError:
                if attempt == 2:
                    raise
        return []


def merged_registry(directory: str | os.PathLike[str]) -> CollectorRegistry:
    """A registry that merges all processes' files on every collect (for /metrics, mirror)."""
    merged = CollectorRegistry()
    merged.register(_MergingCollector(str(directory)))
    return merged


def drift_label(field: str, seen: set[str], cap: int = MAX_DRIFT_FIELDS) -> str:
    """The bounded label for a drifting field: itself (printable, cut to a length) while
    `seen` has room or already holds it, else DRIFT_OTHER. Adds what it admits to `seen`."""
    label = field.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates
    label = "".join(ch if ch.isprintable() else "?" for ch in label)[:MAX_DRIFT_LABEL_CHARS]
    if label in seen:
        return label
    if len(seen) >= cap or label == DRIFT_OTHER:
        return DRIFT_OTHER
    seen.add(label)
    return label


def count_schema_drift(drift: Mapping[tuple[str, str], int]) -> None:
    """Add a batch's drift observations, (field, kind) -> records, to SCHEMA_DRIFT."""
    if not drift:
        return
    with _drift_lock:
        labelled = [(drift_label(f, _drift_fields), kind, n) for (f, kind), n in drift.items()]
    for label, kind, n in labelled:
        SCHEMA_DRIFT.labels(label, kind).inc(n)


def record_processor_failure(shard: str, reason: str, when: float) -> None:
    PROCESSOR_FAILURES.labels(shard, reason).inc()
    PROCESSOR_LAST_FAILURE.labels(shard, reason).set(when)


# --- per-shard facade -------------------------------------------------------------------------
class ShardMetrics:
    """The metrics one shard processor updates, with the shard label bound once."""

    def __init__(self, shard: str) -> None:
        self.shard = shard
        # Bound once: labels() is a dict lookup under a lock, about half of an inc()'s cost.
        self._kinesis = KINESIS_RECORDS_RECEIVED.labels(shard)
        self._user = USER_RECORDS_RECEIVED.labels(shard)
        self._bytes = RECEIVED_BYTES.labels(shard)
        self._heartbeat = PROCESSOR_HEARTBEAT.labels(shard)

    def batch_received(self, sequences: Iterable[int | str], payload_sizes: Iterable[int]) -> None:
        """Count a processRecords batch.

        ``sequences`` has one entry per user record; KPL sub-records share a sequence number,
        so distinct sequences are the Kinesis records.
        """
        seqs = list(sequences)
        self._kinesis.inc(len(set(seqs)))
        self._user.inc(len(seqs))
        self._bytes.inc(sum(payload_sizes))

    def heartbeat(self, now: float | None = None) -> None:
        self._heartbeat.set(time.time() if now is None else now)

    def lease_acquired(self) -> None:
        LEASES_HELD.set(1)
        self.heartbeat()

    def lease_released(self) -> None:
        LEASES_HELD.set(0)

    def checkpoint(self, outcome: str) -> None:
        CHECKPOINTS.labels(self.shard, outcome).inc()
