"""Routes: one buffer plus one commit step per destination, built from the settings.

A route is Flink's writer/committer pair in miniature: `buffer` (pure batching decisions)
holds items until a batch is taken; `deliver` makes that batch durable and returns only then
(retrying transient failures until the shard's lease is lost), reporting what the sink
refused so the pipeline can quarantine it. Every destination writes by deterministic
identity, so a replayed batch overwrites instead of duplicating.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Generic, TypeVar

from consumer.config import Settings
from consumer.metrics import registry as m
from consumer.records.model import Event, Position, Rejected
from consumer.sinks import layout
from consumer.sinks.buffer import FlushHints, SinkBuffer
from consumer.sinks.clients import opensearch_client, redshift_connect
from consumer.sinks.errors import is_retryable
from consumer.sinks.fence import FenceToken
from consumer.sinks.manifest import ShardManifest
from consumer.sinks.retry import Retrier, RetryEvent
from consumer.sinks.rows import (
    rejected_by_sink,
    result_line,
    result_lines,
    result_row,
)
from consumer.sinks.s3 import S3ObjectWriter
from consumer.sinks.schema import output_schema
from consumer.windows.model import WindowResult

T = TypeVar("T")
RESULT_SIZE = 256  # bytes a buffered window result is charged, roughly its encoded size
_POSITION = attrgetter("record.position")
_TS = attrgetter("ts_ms")


@dataclass(frozen=True)
class Delivered:
    written: int
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class Route(Generic[T]):
    name: str
    buffer: SinkBuffer[T]
    # Makes a batch durable; the position is the batch's newest, for sink rejections.
    deliver: Callable[[Sequence[T], Position], Delivered]
    # Objects reserved in the shard's manifest: everything buffered goes in one delivery (the
    # writer cuts the objects), and only once the shard is past every reserved object.
    manifest: ShardManifest | None = None
    aggregation: str = ""  # whose window results it takes ("": the default aggregation's)


class ResultsBuffer(SinkBuffer[WindowResult]):
    """Final results bound for objects under `prefix`, added whole windows at a time in the
    shard's window order. It remembers the newest window added (end_ms, start_ms): results
    objects are reserved by window order, not position, and the committer compares it with
    the last one reserved before it."""

    def __init__(self, name: str, hints: FlushHints, prefix: str) -> None:
        super().__init__(name, hints)
        self.prefix = prefix
        self.newest: tuple[int, int] | None = None

    def add_many(self, items: Sequence[WindowResult], positions: Sequence[Position],
                 sizes: Sequence[int], now_ms: int) -> None:
        super().add_many(items, positions, sizes, now_ms)
        if items:
            self.newest = (items[-1].end_ms, items[-1].start_ms)


class ShardRetriers:
    """One Retrier per sink, all bound to the shard's stop signal (lease lost). Errors are
    fatal unless consumer/sinks/errors.py says they are transient; a fence is never retried
    (another tenure owns the shard)."""

    def __init__(self, retryable: Callable[[BaseException], bool] = is_retryable) -> None:
        self.stopped = threading.Event()
        self._retryable = retryable
        self._by_sink: dict[str, Retrier] = {}

    def stop(self) -> None:
        self.stopped.set()

    def __call__(self, sink: str,
                 retryable: Callable[[BaseException], bool] | None = None) -> Retrier:
        """The sink's Retrier; `retryable` (fixed when it is made) refines the default."""
        if sink not in self._by_sink:
            self._by_sink[sink] = Retrier(sink, retryable=retryable or self._retryable,
                                          should_stop=self.stopped.is_set,
                                          sleep=self.stopped.wait, on_retry=_count_retry)
        return self._by_sink[sink]


def _count_retry(event: RetryEvent) -> None:
    # A failed attempt is a batch that did not succeed (the sink-failures alarm); the same
    # batch is retried until it does, so nothing is dropped.
    m.SINK_RETRIES.labels(event.sink).inc()
    m.SINK_BATCHES.labels(event.sink, "error").inc()


@dataclass
class Routes:
    archive: Route[Event]
    quarantine: Route[Rejected]
    raw: list[Route[Event]]
    results: list[Route[WindowResult]]
    windows: list[Route[WindowResult]]  # final results only, in window order (S3 objects)
    manifest: ShardManifest | None = None

    def all(self) -> list[Route[Any]]:
        # Quarantine last: the other routes' deliveries may add sink rejections to it.
        return [self.archive, *self.raw, *self.results, *self.windows, self.quarantine]


class RouteFactory:
    """Builds a shard's routes from the settings and the clients the shell opened."""

    def __init__(self, settings: Settings, shard_id: str, s3_client: Any,
                 retriers: ShardRetriers, now_ms: Callable[[], int],
                 token: FenceToken | None = None) -> None:
        self.settings = settings
        self.shard_id = shard_id
        self.token = token
        self.retriers = retriers
        self.now_ms = now_ms
        self.prov = layout.Provenance(settings.stream.name, shard_id)
        self.schema = output_schema(settings.contract.key_fields)
        s3 = settings.s3
        self.s3_client = s3_client
        self.state_dir = f"{s3.state_prefix}{settings.stream.app_name}/shard={shard_id}/"
        self.manifest = ShardManifest(s3_client, s3.bucket, f"{self.state_dir}manifest.json",
                                      token)
        self.writer = S3ObjectWriter(s3_client, s3.bucket, s3.format, self.manifest,
                                     settings.flush.max_records)
        f = settings.flush
        self.hints = FlushHints(max_records=f.max_records, max_bytes=f.max_bytes,
                                max_age_ms=f.max_age_ms)

    def buffer(self, name: str) -> SinkBuffer[Any]:
        return SinkBuffer(name, self.hints)

    def _s3(self, sink: str, plans: list[layout.ObjectPlan[Position]]) -> int:
        # Idempotent as a whole: reservations merge by key, objects are If-None-Match.
        return self.retriers(sink).call(functools.partial(self.writer.write, plans))

    def archive(self) -> Route[Event]:
        def deliver(events: Sequence[Event], _: Position) -> Delivered:
            plans = layout.plan_objects(
                list(map(_POSITION, events)), list(map(_TS, events)),
                layout.archive_lines(self.prov, events), self.settings.s3.archive_prefix,
                self.shard_id)
            return Delivered(self._s3("s3-archive", plans))

        return Route("s3-archive", self.buffer("s3-archive"), deliver, self.manifest)

    def quarantine(self) -> Route[Rejected]:
        def deliver(rejected: Sequence[Rejected], _: Position) -> Delivered:
            now = self.now_ms()
            records = [r for r in rejected if not r.stage.startswith("sink:")]
            # Partitioned by arrival time: a rejected record may have no usable event time.
            plans = layout.plan_objects(
                list(map(_POSITION, records)), [r.record.arrival_ms for r in records],
                [layout.quarantine_line(self.prov, r, now) for r in records],
                self.settings.s3.quarantine_prefix, self.shard_id)
            written = self._s3("s3-quarantine", plans)
            written += self._sink_rejections([r for r in rejected if r.stage.startswith("sink:")],
                                             now)
            # Once per reason, not per record: labels() is a lookup under a lock.
            for reason, n in Counter(r.reason for r in rejected).items():
                m.RECORDS_QUARANTINED.labels(self.shard_id, reason).inc(n)
            return Delivered(written)

        return Route("s3-quarantine", self.buffer("s3-quarantine"), deliver, self.manifest)

    def _sink_rejections(self, rejected: Sequence[Rejected], now: int) -> int:
        """A document a sink refused has no shard position of its own (a window result is
        not a record), so it gets an object named by its identity instead."""
        retry = self.retriers("s3-quarantine")
        written = 0
        for r in rejected:
            prefix = layout.partition_prefix(
                f"{self.settings.s3.quarantine_prefix}stage={r.stage.replace(':', '-')}/",
                layout.hour_partition(now), self.shard_id)
            fmt = self.writer.format
            key = f"{prefix}{r.record.partition_key}{layout.SUFFIXES[fmt]}"
            body = layout.encode_body([layout.quarantine_line(self.prov, r, now)], fmt)
            written += int(retry.call(functools.partial(self.writer.put_if_absent, key, body)))
        return written

    def s3_results(self, aggregation: str = "") -> Route[WindowResult]:
        """Final results, many windows to an object. The pipeline buffers each engine
        step's final results in the shard's window order (layout.WindowOrder, the same in
        every replay), so objects are named by the range of window order they hold and are
        reserved in the manifest, like archive objects by position: a replay, or an old
        owner's late PUT, writes the same objects.

        A declared aggregation has its own prefix (results_prefix + "agg=<name>/") and its
        own manifest next to the shard's: window order is per aggregation (each has its
        own watermark), so its reservations are compared and dropped apart."""
        prefix, writer, manifest, name = self.settings.s3.results_prefix, self.writer, \
            self.manifest, "s3-results"
        if aggregation:
            prefix, name = f"{prefix}agg={aggregation}/", f"s3-results:{aggregation}"
            manifest = ShardManifest(self.s3_client, self.settings.s3.bucket,
                                     f"{self.state_dir}agg={aggregation}/manifest.json",
                                     self.token)
            writer = S3ObjectWriter(self.s3_client, self.settings.s3.bucket, writer.format,
                                    manifest, self.settings.flush.max_records)

        def deliver(results: Sequence[WindowResult], _: Position) -> Delivered:
            lines = result_lines(results)  # in window order
            plans = layout.plan_objects(layout.window_orders(results),
                                        [r.start_ms for r in results], lines, prefix,
                                        self.shard_id)
            kind = results[0].kind if results else ""
            return Delivered(self.retriers(name).call(
                functools.partial(writer.write_results, plans, kind)))

        return Route(name, ResultsBuffer(name, self.hints, prefix), deliver, manifest,
                     aggregation)

    def redshift(self, connect: Callable[[], Any], staging_client: Any,
                 aggregations: Sequence[str] = ()) -> tuple[
            Route[Event], list[Route[WindowResult]]]:
        """The raw rows' route, and a results route per aggregation (the default's first),
        each into its own table (redshift.results_table)."""
        from consumer.sinks import redshift as rs

        cfg = self.settings.redshift
        staging = rs.S3StagingStore(staging_client, self.settings.s3.bucket, cfg.staging_prefix)
        dialect: rs.Dialect = (rs.PostgresDialect() if cfg.dialect == "postgres"
                               else rs.RedshiftDialect(cfg.copy_role_arn))
        loader = rs.RedshiftLoader(cfg.schema, dialect, staging, use_merge=cfg.upsert == "merge")
        stream = self.settings.stream.name
        writer = rs.ShardWriter(stream, self.shard_id, self.token) if self.token else None
        deadline = rs.load_deadline_s(cfg.statement_timeout_ms, self.settings.kcl.failover_time_ms)
        raw_sink = rs.RedshiftSink("redshift-raw",
                                   rs.event_binding(self.schema, stream, self.shard_id),
                                   loader, connect,
                                   self.retriers("redshift-raw", rs.retryable), writer,
                                   deadline)

        def deliver_raw(events: Sequence[Event], _: Position) -> Delivered:
            return Delivered(raw_sink.write_batch(events, "").written)

        def results_route(aggregation: str) -> Route[WindowResult]:
            name = f"redshift-results:{aggregation}" if aggregation else "redshift-results"
            sink = rs.RedshiftSink(name, rs.window_binding(aggregation), loader, connect,
                                   self.retriers(name, rs.retryable), writer, deadline)

            def deliver(results: Sequence[WindowResult], _: Position) -> Delivered:
                return Delivered(sink.write_batch(results, "").written)

            return Route(name, self.buffer(name), deliver, aggregation=aggregation)

        return (Route("redshift-raw", self.buffer("redshift-raw"), deliver_raw),
                [results_route(a) for a in ("", *aggregations)])

    def opensearch(self, client: Any, aggregation: str = "") -> Route[WindowResult]:
        from consumer.sinks import opensearch as osr

        name = f"opensearch-results:{aggregation}" if aggregation else "opensearch-results"
        sink = osr.window_results_sink(client, self.settings.opensearch.index_prefix,
                                       self.retriers(name, osr.retryable), aggregation)

        def deliver(results: Sequence[WindowResult], position: Position) -> Delivered:
            outcome = sink.write_batch(results)  # one document per result id, the last
            by_id = {r.result_id: r for r in results} if outcome.rejected else {}
            rejected = [
                rejected_by_sink("opensearch", item, result_line(result_row(by_id[item.item_id])),
                                 position, self.now_ms())
                for item in outcome.rejected
            ]
            return Delivered(outcome.written, rejected)

        return Route(name, self.buffer(name), deliver, aggregation=aggregation)


def opensearch_for(settings: Settings) -> Any:
    """The OpenSearch client the settings describe (SigV4 unless auth is "none")."""
    from consumer.aws import region

    o = settings.opensearch
    return opensearch_client(o.endpoint, auth=o.auth, service=o.service, region=region(),
                             timeout_s=o.timeout_s)


def open_routes(settings: Settings, shard_id: str, retriers: ShardRetriers,
                now_ms: Callable[[], int], s3_client: Any,
                token: FenceToken | None = None, aggregations: Sequence[str] = ()) -> Routes:
    """Every route the settings enable, with the clients they need. With a fence token, the
    sinks that can refuse a stale writer themselves are told who writes (Redshift).
    `aggregations`: the declared ones' names, each with its own results routes: S3 objects
    under its prefix, its Redshift table, its OpenSearch indices."""
    factory = RouteFactory(settings, shard_id, s3_client, retriers, now_ms, token)
    raw: list[Route[Event]] = []
    results: list[Route[WindowResult]] = []
    windows: list[Route[WindowResult]] = []
    if settings.windows.enabled:
        windows += [factory.s3_results(name) for name in ("", *aggregations)]
    if settings.redshift.enabled:
        rs = settings.redshift
        raw_route, results_routes = factory.redshift(lambda: redshift_connect(
            rs.connect_dsn(), connect_timeout_s=rs.connect_timeout_s,
            statement_timeout_ms=rs.statement_timeout_ms, dialect=rs.dialect), s3_client,
            aggregations)
        if settings.redshift.load_raw:
            raw.append(raw_route)
        if settings.windows.enabled:
            results += results_routes
    if settings.opensearch.enabled and settings.windows.enabled:
        client = opensearch_for(settings)
        results += [factory.opensearch(client, a) for a in ("", *aggregations)]
    return Routes(factory.archive(), factory.quarantine(), raw, results, windows,
                  factory.manifest)
