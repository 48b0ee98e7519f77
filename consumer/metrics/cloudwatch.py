"""Mirror the merged Prometheus metrics into CloudWatch: EMF log lines, PutMetricData, or off.

The mirror runs in the supervisor and reads the same merged registry as /metrics, so both
views agree. Every publish turns the registry into datums:

- counters: the increase since the previous successful publish (CloudWatch sums per period);
- gauges: the current value;
- histograms: increases of ``<name>_count`` and ``<name>_sum`` (mean = sum / count);

named exactly like the Prometheus samples, with the labels as dimensions (``shard`` becomes
``Shard``...) plus ``Application`` and ``Stream``. Counter baselines move only after a publish
succeeded, so a failed PutMetricData is re-sent as part of the next delta rather than lost.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Literal

from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.serializers.log_serializer import LogSerializer
from prometheus_client import CollectorRegistry, Metric

from consumer.metrics.registry import merged_registry, reap_dead_processes

if TYPE_CHECKING:  # only for the annotation: config imports nothing from metrics
    from consumer.config import Settings

log = logging.getLogger(__name__)

MirrorMode = Literal["emf", "put", "off"]
PUT_BATCH = 1000  # PutMetricData's limit of MetricDatum entries per request

Dimensions = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Dimensions]
# The registry itself, or a callable returning it (e.g. MetricsServer.collect_source, which
# first forgets the live gauges of exited processes).
Source = CollectorRegistry | Callable[[], CollectorRegistry]


@dataclass(frozen=True, slots=True)
class Datum:
    name: str
    dimensions: Dimensions
    value: float
    unit: str


def cloudwatch_name(sample_name: str) -> str:
    """CloudWatch's name for a Prometheus sample: the namespace already says AetherStream and
    CloudWatch has no counter type, so prefix and `_total` go (aetherstream_sink_batches_total
    -> sink_batches). The dashboards and alarms in deploy/ecs use these names."""
    name = sample_name.removeprefix("aetherstream_")
    return name.removesuffix("_total")


def unit_for(name: str) -> str:
    """CloudWatch unit from the Prometheus naming convention."""
    if name.endswith(("_seconds_sum", "_seconds")):
        return "Seconds"
    if name.endswith(("_bytes", "_bytes_total")):
        return "Bytes"
    if name.startswith("aetherstream_millis_"):
        return "Milliseconds"
    if name.endswith(("_total", "_count", "_records")):
        return "Count"
    return "None"


class DeltaTracker:
    """Turns registry snapshots into datums, remembering counter values between publishes."""

    def __init__(self, static_dimensions: dict[str, str]) -> None:
        self._static: Dimensions = tuple(sorted(static_dimensions.items()))
        self._baseline: dict[SeriesKey, float] = {}

    def datums(self, families: Iterable[Metric]) -> tuple[list[Datum], dict[SeriesKey, float]]:
        """Datums for this snapshot and the counter totals to :meth:`commit` once published."""
        out: list[Datum] = []
        totals: dict[SeriesKey, float] = {}
        for family in families:
            for sample in family.samples:
                cumulative = self._is_cumulative(family.type, sample.name)
                if cumulative is None or not math.isfinite(sample.value):
                    continue
                dims = self._dimensions(sample.labels)
                value = sample.value
                if cumulative:
                    totals[(sample.name, dims)] = value
                    previous = self._baseline.get((sample.name, dims), 0.0)
                    # A total below the baseline means the counter restarted from zero.
                    value = value - previous if value >= previous else value
                out.append(Datum(cloudwatch_name(sample.name), dims, value,
                                 unit_for(sample.name)))
        return out, totals

    def commit(self, totals: dict[SeriesKey, float]) -> None:
        self._baseline.update(totals)

    @staticmethod
    def _is_cumulative(family_type: str, sample_name: str) -> bool | None:
        """True for counter-like samples, False for gauges, None for samples we skip."""
        if family_type == "counter":
            return True if sample_name.endswith("_total") else None  # skips _created
        if family_type == "histogram":
            return True if sample_name.endswith(("_count", "_sum")) else None  # no buckets
        if family_type == "gauge":
            return False
        return None

    def _dimensions(self, labels: dict[str, str]) -> Dimensions:
        # CloudWatch rejects empty dimension values; an empty label carries no information.
        extra = tuple((k[:1].upper() + k[1:], v) for k, v in sorted(labels.items()) if v)
        return self._static + extra


class Mirror:
    """Publishes on an interval in a daemon thread; :meth:`publish_once` for tests."""

    def __init__(
        self, source: Source, static_dimensions: dict[str, str], interval_s: float
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self._tracker = DeltaTracker(static_dimensions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish_once(self) -> int:
        """Publish one snapshot; returns the number of datums sent."""
        registry = self.source if isinstance(self.source, CollectorRegistry) else self.source()
        datums, totals = self._tracker.datums(registry.collect())
        if datums:
            self._send(datums, datetime.now(UTC))
        self._tracker.commit(totals)
        return len(datums)

    def _send(self, datums: Sequence[Datum], timestamp: datetime) -> None:
        raise NotImplementedError

    def start(self) -> Mirror:
        self._thread = threading.Thread(target=self._run, name="cloudwatch-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self, final_publish: bool = True) -> None:
        """Stop the thread; by default publish once more so the last increments are not lost."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 10)
            self._thread = None
        if final_publish:
            self._publish_logged()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._publish_logged()

    def _publish_logged(self) -> None:
        try:
            self.publish_once()
        except Exception:  # keep mirroring: the next delta carries what this one missed
            log.exception("CloudWatch mirror publish failed")


class EmfMirror(Mirror):
    """Writes CloudWatch Embedded Metric Format JSON lines (ECS awslogs ships them).

    The stream defaults to stderr: a processor's stdout is the KCL protocol channel, and in
    the supervisor stderr is where the rest of our JSON log goes too.
    """

    def __init__(
        self, source: Source, static_dimensions: dict[str, str], interval_s: float,
        *, namespace: str, stream: IO[str] | None = None,
    ) -> None:
        super().__init__(source, static_dimensions, interval_s)
        self.namespace = namespace
        self._stream = stream
        self._lock = threading.Lock()

    def _send(self, datums: Sequence[Datum], timestamp: datetime) -> None:
        # EMF puts dimension values at the event root, so one event group per dimension set.
        groups: dict[Dimensions, list[Datum]] = {}
        for datum in datums:
            groups.setdefault(datum.dimensions, []).append(datum)
        lines: list[str] = []
        for dims, members in groups.items():
            context = MetricsContext(namespace=self.namespace)
            context.set_dimensions([dict(dims)])
            context.set_timestamp(timestamp)
            for datum in members:
                context.put_metric(datum.name, datum.value, datum.unit)
            lines.extend(LogSerializer.serialize(context))
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            stream.write("".join(line + "\n" for line in lines))
            stream.flush()


class PutMirror(Mirror):
    """Sends datums with PutMetricData, at most :data:`PUT_BATCH` per request."""

    def __init__(
        self, source: Source, static_dimensions: dict[str, str], interval_s: float,
        *, namespace: str, client: Any,
    ) -> None:
        super().__init__(source, static_dimensions, interval_s)
        self.namespace = namespace
        self.client = client

    def _send(self, datums: Sequence[Datum], timestamp: datetime) -> None:
        entries = [
            {
                "MetricName": d.name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in d.dimensions],
                "Timestamp": timestamp,
                "Value": d.value,
                "Unit": d.unit,
            }
            for d in datums
        ]
        for start in range(0, len(entries), PUT_BATCH):
            self.client.put_metric_data(
                Namespace=self.namespace, MetricData=entries[start : start + PUT_BATCH]
            )


def build_mirror(
    mode: MirrorMode,
    *,
    namespace: str,
    application: str,
    stream_name: str,
    multiproc_dir: str | None = None,
    source: Source | None = None,
    interval_s: float = 60.0,
    emf_stream: IO[str] | None = None,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    client: Any = None,
) -> Mirror | None:
    """The mirror the config asks for (None for "off"); call ``.start()`` on it.

    Reads ``source`` if given, else the merge of ``multiproc_dir`` (reaping exited processes
    before each publish, as the HTTP server does).
    """
    if mode == "off":
        return None
    if source is None:
        if multiproc_dir is None:
            raise ValueError("build_mirror needs multiproc_dir or source")
        source = _reaping_source(multiproc_dir)
    static = {"Application": application, "Stream": stream_name}
    if mode == "emf":
        return EmfMirror(source, static, interval_s, namespace=namespace, stream=emf_stream)
    if mode == "put":
        if client is None:
            import boto3

            client = boto3.client("cloudwatch", endpoint_url=endpoint_url, region_name=region_name)
        return PutMirror(source, static, interval_s, namespace=namespace, client=client)
    raise ValueError(f"cloudwatch mirror mode must be emf, put or off, not {mode!r}")


def _reaping_source(multiproc_dir: str) -> Callable[[], CollectorRegistry]:
    registry = merged_registry(multiproc_dir)

    def collect_source() -> CollectorRegistry:
        reap_dead_processes(multiproc_dir)
        return registry

    return collect_source


def start_mirror(
    settings: Settings, source: Source, env: Mapping[str, str] | None = None
) -> Mirror | None:
    """The supervisor's entry: build from settings.metrics and start it (None when "off").

    The CloudWatch endpoint and region come from ``env`` (AWS_ENDPOINT_URL_CLOUDWATCH or
    AWS_ENDPOINT_URL; AWS_REGION or AWS_DEFAULT_REGION), so the local stack can point it at
    moto the same way it points boto3 and the KCL.
    """
    env = os.environ if env is None else env
    mirror = build_mirror(
        settings.metrics.cloudwatch,
        namespace=settings.metrics.namespace,
        application=settings.stream.app_name,
        stream_name=settings.stream.name,
        source=source,
        interval_s=settings.metrics.publish_interval_s,
        endpoint_url=env.get("AWS_ENDPOINT_URL_CLOUDWATCH") or env.get("AWS_ENDPOINT_URL"),
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    if mirror is not None:
        mirror.start()
        log.info("CloudWatch mirror started", extra={"mode": settings.metrics.cloudwatch,
                                                     "interval_s": mirror.interval_s})
    return mirror
