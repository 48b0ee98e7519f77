"""Where ours' CPU goes, by stage: `aetherstream bench processor --stages`.

The bench runs ours once more with this module as the shard host's child (`python -m
consumer.kcl python -m consumer.bench.stages`): it wraps the stages below with CPU timers
(time.process_time, inclusive of what they call), then runs the record processor as
consumer.kcl.worker does, and at exit writes each stage's CPU seconds and calls as JSON to
the file named by STAGES_FILE_ENV. A timer costs about a microsecond a call and the stages are
called per batch or per flush, so the timed run costs what the measured one does, within noise.

Sampling profilers (py-spy) count wall time spread over threads; these are the process's own
CPU seconds, comparable with the bench's ratios. An indented stage is part of the one above
it; the unindented ones do not overlap, and the bench shows what they leave out as the rest
(callbacks' own work, metrics, shutdown).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

STAGES_FILE_ENV = "AETHERSTREAM_BENCH_STAGES_FILE"

# (label, module, attribute): a function of the module or a method of one of its classes.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("initialize", "consumer.kcl.processor", "ShardProcessor.initialize"),
    ("protocol: read lines", "amazon_kclpy.kcl", "_IOHandler.read_line"),
    ("protocol: decode batches", "consumer.kcl.protocol", "FastIO.load_action"),
    ("ingest", "consumer.pipeline", "ShardPipeline.ingest"),
    ("  decode + windows", "consumer.windows.engine", "WindowEngine.process_records"),
    ("  buffer results", "consumer.pipeline", "ShardPipeline._emit"),
    ("commit (at each flush and at shutdown)", "consumer.pipeline", "ShardPipeline.commit"),
    ("  archive lines", "consumer.sinks.layout", "archive_lines"),
    ("  results lines", "consumer.sinks.routes", "result_lines"),
    ("  objects planned", "consumer.sinks.layout", "plan_objects"),
    ("  gzip", "consumer.sinks.layout", "gzip_body"),
    ("  S3 PUTs", "consumer.sinks.s3", "S3ObjectWriter.put_if_absent"),
    ("  manifest", "consumer.sinks.manifest", "ShardManifest.reserve"),
    ("  owner confirmed", "consumer.commit.committer", "Committer.confirm_owner"),
    ("  snapshot", "consumer.commit.committer", "Committer._save"),
)
# Imported by initialize only when their sink is on: timed once it has returned, if loaded.
# The Redshift COPY is the local dialect's: production's cluster reads the staged object
# from S3 itself, so its client does none of that stage's work.
SINK_STAGES: tuple[tuple[str, str, str], ...] = (
    ("  Redshift", "consumer.sinks.redshift", "RedshiftSink.write_batch"),
    ("    CSV encoded", "consumer.sinks.redshift", "encode_csv"),
    ("    staged object PUT", "consumer.sinks.redshift", "S3StagingStore.put"),
    ("    COPY (local only: staged bytes read back, streamed)", "consumer.sinks.redshift",
     "PostgresDialect.copy_into_stage"),
    ("  OpenSearch", "consumer.sinks.opensearch", "OpenSearchSink.write_batch"),
    ("    bulk bodies", "consumer.sinks.opensearch", "bulk_body"),
    ("    bulk responses classified", "consumer.sinks.opensearch", "classify_items"),
)


def resolve(module: str, attribute: str) -> tuple[Any, str]:
    """The object holding a stage's function (its module or class) and the function's name;
    AttributeError when it is not there."""
    owner: Any = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    if not callable(getattr(owner, name)):
        raise AttributeError(f"{module}.{attribute} is not a function")
    return owner, name


class StageClock:
    """CPU seconds and calls per stage label."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first_call_cpu_s: float | None = None

    def timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock, seconds, calls = self.clock, self.seconds, self.calls
        seconds.setdefault(label, 0.0)
        calls.setdefault(label, 0)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            if self.first_call_cpu_s is None:
                self.first_call_cpu_s = started  # the first message: start-up is over
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - started
                calls[label] += 1

        return wrapper

    def install(self, stages: tuple[tuple[str, str, str], ...] = STAGES,
                loaded_only: bool = False) -> None:
        """Wrap the stages in place (loaded_only: those whose module is imported already). A
        stage that is not there any more raises AttributeError: a rename cannot leave it
        silently untimed."""
        for label, module, attribute in stages:
            if loaded_only and module not in sys.modules:
                continue
            owner, name = resolve(module, attribute)
            setattr(owner, name, self.timed(label, getattr(owner, name)))

    def report(self) -> dict[str, Any]:
        return {"process_cpu_s": self.clock(), "startup_cpu_s": self.first_call_cpu_s or 0.0,
                "stages": {label: {"cpu_s": self.seconds[label], "calls": self.calls[label]}
                           for label, _, _ in (*STAGES, *SINK_STAGES)
                           if label in self.seconds}}


def main() -> int:
    """consumer.kcl.worker's main, with the stages timed. The modules are imported here, before
    the worker guards stdout (none of them prints), and are the ones it imports."""
    from consumer.kcl import worker
    from consumer.kcl.processor import ShardProcessor

    clock = StageClock()
    clock.install()
    initialize = ShardProcessor.initialize

    def initialize_then_time_sinks(self: ShardProcessor, initialize_input: Any) -> None:
        initialize(self, initialize_input)
        clock.install(SINK_STAGES, loaded_only=True)

    ShardProcessor.initialize = initialize_then_time_sinks  # type: ignore[method-assign]
    path = os.environ.get(STAGES_FILE_ENV)
    if path:
        atexit.register(lambda: _write(path, clock.report()))
    return worker.main()


def _write(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as out:
        json.dump(report, out)


if __name__ == "__main__":
    sys.exit(main())
