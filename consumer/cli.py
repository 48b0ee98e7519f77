"""The `aetherstream` command. Each subcommand is a thin wrapper over a module of its stage."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.config import (
    ConfigError,
    Settings,
    load_settings,
    load_settings_with_sources,
    sources_after,
    validate,
)


def say(text: str) -> None:
    """Command output for the person or script that ran the command. (Never reached from the
    record processor, whose stdout is the KCL protocol channel.)"""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def cmd_run(args: argparse.Namespace) -> int:
    import os

    from consumer.kcl.supervisor import run

    settings = _settings(args)
    if args.config:  # the processors (the daemon's children) read the same file
        os.environ["AETHERSTREAM_CONFIG"] = str(Path(args.config).resolve())
    return run(settings, Path(args.run_dir or settings.run_dir))


def cmd_local_up(args: argparse.Namespace) -> int:
    import threading

    from consumer.local.stack import LocalRun
    from consumer.local.up import serve

    settings, sources = load_settings_with_sources(getattr(args, "config", None))
    run = LocalRun(
        settings, Path(args.run_dir), shards=args.shards, postgres_dsn=args.postgres_dsn
    )
    # The local stack shortens some settings (failover, ports): the result must hold too,
    # checked before any emulator starts.
    validate(run.settings,
             sources_after(settings, run.settings, sources, "local up (consumer/local/stack.py)"))
    log_path = _log_to_run_dir(Path(args.run_dir), settings.log.level)
    print(f"local up: logs in {log_path}", file=sys.stderr)
    try:
        return serve(run, threading.Event(), say, consumer=not args.no_consumer)
    finally:
        run.stop()


def cmd_local_env(args: argparse.Namespace) -> int:
    from consumer.local import stackfile

    try:
        data = stackfile.read(Path(args.run_dir))
    except stackfile.NoRunningStack as exc:
        print(f"aetherstream local env: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(stackfile.export_lines(data["env"]))
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from consumer.aws import client
    from consumer.local.producer import ProducerSpec, produce

    settings = _settings(args)
    spec = ProducerSpec(
        records=args.records,
        devices=args.devices,
        poison_ratio=args.poison_ratio,
        kpl_fraction=args.kpl_fraction,
        seed=args.seed,
    )
    report = produce(
        client("kinesis"),
        args.stream or settings.stream.name,
        spec,
        rate=args.rate,
        progress=not args.quiet,
    )
    say(json.dumps(report.__dict__))
    return 0


def _log_to_run_dir(run_dir: Path, level: str) -> Path:
    """Local modes keep the terminal for the summary; the JSON logs go to a file."""
    from consumer.metrics.logs import configure_logging

    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "aetherstream.log"
    configure_logging(level, stream=path.open("a", buffering=1), component="local")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    from consumer.local.demo import RunDirBusy, human_summary, reconciled, run_demo

    log_path = _log_to_run_dir(Path(args.run_dir), _settings(args).log.level)
    sys.stderr.write(f"demo: starting the local stack and the KCL daemon; logs in {log_path}\n")
    try:
        summary = run_demo(_settings(args), Path(args.run_dir), args.records, args.timeout,
                           args.poison_ratio)
    except RunDirBusy as exc:
        print(f"aetherstream demo: {exc}", file=sys.stderr)
        return 1
    say(json.dumps(summary) if args.json else human_summary(summary))
    return 0 if reconciled(summary) else 1


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "windows":
        from consumer.bench.windows import main as bench_windows

        return int(bench_windows(args.rest))
    if args.what == "processor":
        from consumer.bench.processor import main as bench_processor

        return int(bench_processor(args.rest, _settings(args)))
    if args.what == "memory":
        from consumer.bench.memory import main as bench_memory

        return int(bench_memory(args.rest, _settings(args)))
    from consumer.bench.sinks import main as bench_sinks

    return int(bench_sinks(args.rest))


def cmd_quarantine(args: argparse.Namespace) -> int:
    from consumer.aws import client
    from consumer.sinks import quarantine as q

    settings = _settings(args)
    flt = q.Filter(reason=args.reason, stage=args.stage)
    bucket, prefix = settings.s3.bucket, settings.s3.quarantine_prefix
    if args.quarantine_command == "ls":
        summary = q.summarize(client("s3"), bucket, prefix, flt)
        say(f"{summary.records} quarantined records in {summary.objects} objects "
              f"under s3://{bucket}/{prefix}")
        for (stage, reason), n in summary.by_reason.most_common():
            say(f"  {n:>8}  {stage}/{reason}  e.g. {summary.examples[(stage, reason)]}")
        return 0
    report = q.replay(client("s3"), client("kinesis"), bucket, prefix,
                      args.stream or settings.stream.name, flt, dry_run=args.dry_run)
    verb = "would put back" if args.dry_run else "put back"
    say(f"{verb} {report.records} records from {report.objects} objects "
          f"({report.skipped_objects} objects already replayed)")
    return 0


def cmd_runbook(args: argparse.Namespace) -> int:
    from consumer.aws import client
    from consumer.runbook.checks import run_checks

    clients = {name: client(name) for name in ("kinesis", "dynamodb", "s3")}
    findings = run_checks(_settings(args), clients, args.worker_url or [], args.hours,
                          args.max_quarantined)
    if args.json:
        say(json.dumps([f.__dict__ for f in findings]))
    else:
        for f in findings:
            say(f"{'ok  ' if f.ok else 'FAIL'}  {f.area:<12} {f.check:<11} {f.detail}")
    return 0 if all(f.ok for f in findings) else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from consumer.config import settings_path
    from consumer.sinks.migrate import migrate_all
    from consumer.windows.aggconfig import load_aggregations

    settings = _settings(args)
    path = getattr(args, "config", None) or settings_path()
    declared = [a.name for a in load_aggregations(path, settings)]
    for item in migrate_all(settings, declared) or ["nothing to migrate: no sink enabled"]:
        say(item)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    from consumer.scaling.shell import main as scale_main

    return int(scale_main(args.rest))


def cmd_transform(args: argparse.Namespace) -> int:
    """The configured chain and windows over a file, as NDJSON (consumer/transform/testrun.py);
    with --against-archive, compared with the stored results (consumer/transform/against.py)."""
    import os

    from consumer.aws import client
    from consumer.pipeline import contract_from, window_spec
    from consumer.transform.config import load_chain
    from consumer.transform.inputs import archive_shards, raw_records
    from consumer.transform.stage import TransformStage
    from consumer.transform.testrun import read_lines, report, shard_order
    from consumer.windows.aggconfig import load_aggregations
    from consumer.windows.aggregations import AggregationSet
    from consumer.windows.engine import WindowEngine

    path = args.transform_config or args.config or os.environ.get("AETHERSTREAM_CONFIG")
    if not path:
        print("aetherstream transform test: no settings file: --config F (or "
              "AETHERSTREAM_CONFIG) names the one with the [[transform]] tables",
              file=sys.stderr)
        return 2
    settings = load_settings(path)  # [contract] and [windows] as the service reads them
    configured = load_chain(path, s3=lambda: client("s3"))
    declared = load_aggregations(path, settings)
    try:
        lines = read_lines(Path(args.input))
    except OSError as exc:
        print(f"aetherstream transform test: {exc}", file=sys.stderr)
        return 1
    shards = sorted(archive_shards(lines))
    if len(shards) > 1:  # the service windows each shard on its own, with its own watermark
        print(f"aetherstream transform test: {args.input} holds records of several shards "
              f"({', '.join(shards)}): give one shard's archive lines", file=sys.stderr)
        return 2
    if args.against_archive and not settings.windows.enabled:
        print("aetherstream transform test: --against-archive compares window results, and "
              f"{path} has windows.enabled = false", file=sys.stderr)
        return 2
    shard = shards[0] if shards else None
    contract = contract_from(settings)
    engine = WindowEngine(window_spec(settings), shard or "input") \
        if settings.windows.enabled else None
    aggregations = AggregationSet(declared, shard or "input") \
        if declared and engine is not None else None
    results = []
    for line in report(TransformStage(configured.chain, contract), contract, engine,
                       shard_order(raw_records(lines)), args.batch_size, aggregations):
        _emit(line)
        if line["type"] == "result":
            results.append(line)
    if args.against_archive:
        return _against_archive(args.against_archive, settings.s3.results_prefix, results,
                                shard, lambda: client("s3"))
    sys.stdout.flush()
    return 0


def _emit(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")


def _against_archive(url: str, results_prefix: str, results: list[dict[str, Any]],
                     shard: str | None, s3: Callable[[], Any]) -> int:
    """Differences from the stored results as NDJSON: 0 if none, 1 if any (or S3 failed).
    Each aggregation against its own results: the default's under the prefix, a declared
    one's under <prefix>agg=<name>/."""
    from botocore.exceptions import BotoCoreError, ClientError

    from consumer.transform import against

    try:
        bucket, prefix = against.parse_url(url, results_prefix)
    except ValueError as exc:
        print(f"aetherstream transform test: {exc}", file=sys.stderr)
        return 2
    equal = True
    for name in sorted({r["aggregation"] for r in results} | {""}):
        mine = [r for r in results if r["aggregation"] == name]
        where = prefix + (f"agg={name}/" if name else "")
        try:
            rows, objects = against.read_stored(s3(), bucket,
                                                against.prefixes(where, mine, shard))
        except (BotoCoreError, ClientError) as exc:
            print(f"aetherstream transform test: reading s3://{bucket}/{where}: {exc}",
                  file=sys.stderr)
            return 1
        stored, repeated = against.merged(rows)
        for line in against.compare(mine, stored):
            line = {"type": line.pop("type"), "aggregation": name, **line}
            if line["type"] == "comparison":
                line |= {"against": f"s3://{bucket}/{where}", "shard": shard or "all",
                         "objects": objects, "repeated_result_ids": repeated}
                equal = equal and line["equal_overall"]
            _emit(line)
    sys.stdout.flush()
    return 0 if equal else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aetherstream", description=__doc__)
    p.add_argument("--config", help="TOML settings file (default: $AETHERSTREAM_CONFIG)")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="production entry point: metrics server + KCL daemon")
    run.add_argument("--run-dir", help="working dir for properties, logs and metrics files")
    run.set_defaults(func=cmd_run)

    local = sub.add_parser("local", help="the embedded local stack")
    local_sub = local.add_subparsers(dest="local_command", required=True)
    up = local_sub.add_parser("up", help="start emulators + the service; Ctrl-C stops all "
                                         "(the emulators outlive a consumer that dies)")
    up.add_argument("--run-dir", default="run/local")
    up.add_argument("--shards", type=int, default=4)
    up.add_argument("--postgres-dsn", help="use this PostgreSQL instead of starting pgserver")
    up.add_argument("--no-consumer", action="store_true",
                    help="emulators only; run workers with `aetherstream local env`")
    up.set_defaults(func=cmd_local_up)
    env = local_sub.add_parser("env", help="export lines for a worker against a running stack")
    env.add_argument("--run-dir", default="run/local")
    env.set_defaults(func=cmd_local_env)

    prod = sub.add_parser("produce", help="send synthetic IoT records to the stream")
    prod.add_argument("--stream")
    prod.add_argument("--records", type=int, default=10_000)
    prod.add_argument("--rate", type=float, default=0.0, help="user records/s; 0 = unlimited")
    prod.add_argument("--devices", type=int, default=200)
    prod.add_argument("--kpl-fraction", type=float, default=0.0)
    prod.add_argument("--poison-ratio", type=float, default=0.0)
    prod.add_argument("--seed", type=int, default=7)
    prod.add_argument("--quiet", action="store_true")
    prod.set_defaults(func=cmd_produce)

    demo = sub.add_parser("demo", help="local up, produce, consume, reconcile, shut down")
    demo.add_argument("--records", type=int, default=10_000)
    demo.add_argument("--poison-ratio", type=float, default=0.0,
                      help="share of bad records, e.g. 0.01, to see quarantine at work")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.add_argument("--run-dir", default="run/demo")
    demo.add_argument("--timeout", type=float, default=300.0)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks that print ratios from one run")
    bench.add_argument("what", choices=["windows", "sinks", "processor", "memory"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)

    quar = sub.add_parser("quarantine", help="list quarantined records, or replay them")
    quar_sub = quar.add_subparsers(dest="quarantine_command", required=True)
    for name, text in (("ls", "count by stage and reason"),
                       ("replay", "put records back on the stream after a fix")):
        cmd = quar_sub.add_parser(name, help=text)
        cmd.add_argument("--reason", help="only this reason, e.g. invalid_json")
        cmd.add_argument("--stage", help="only this stage: decode, contract, window, sink:...")
        if name == "replay":
            cmd.add_argument("--stream", help="default: the configured stream")
            cmd.add_argument("--dry-run", action="store_true")
        cmd.set_defaults(func=cmd_quarantine)

    book = sub.add_parser("runbook", help="run the runbook's checks against the live systems")
    book.add_argument("--worker-url", action="append",
                      help="a worker's metrics base URL, e.g. http://10.0.1.5:9400 (repeatable)")
    book.add_argument("--hours", type=int, default=1, help="quarantine look-back in hours")
    book.add_argument("--max-quarantined", type=int, default=1000)
    book.add_argument("--json", action="store_true")
    book.set_defaults(func=cmd_runbook)

    mig = sub.add_parser("migrate", help="create the Redshift schema, OpenSearch templates and "
                                         "the fencing table")
    mig.set_defaults(func=cmd_migrate)

    scale = sub.add_parser("scale", help="task count recommendation from the shard count")
    scale.add_argument("rest", nargs=argparse.REMAINDER)
    scale.set_defaults(func=cmd_scale)

    tr = sub.add_parser("transform", help="the transform chain of the settings file")
    tr_sub = tr.add_subparsers(dest="transform_command", required=True)
    tr_test = tr_sub.add_parser(
        "test", help="run the [[transform]] chain and the windows over an NDJSON file (or "
                     "raw archive lines, e.g. a .ndjson.gz object) as the service would, and "
                     "print each record before and after, the quarantine reasons, the window "
                     "results and a summary as NDJSON")
    tr_test.add_argument("--input", required=True, help="NDJSON records, or a raw archive "
                                                        "object (.ndjson.gz)")
    tr_test.add_argument("--config", dest="transform_config",
                         help="settings file with [[transform]] tables (default: the global "
                              "--config, then $AETHERSTREAM_CONFIG)")
    tr_test.add_argument("--batch-size", type=int, default=500,
                         help="records per chain call, as KCL batches would be")
    tr_test.add_argument("--against-archive", metavar="s3://BUCKET/PREFIX",
                         help="compare the window results with the ones stored under this "
                              "results prefix (default prefix: s3.results_prefix); exit 1 "
                              "if they differ")
    tr_test.set_defaults(func=cmd_transform)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from consumer.metrics.logs import configure_logging

    try:
        # `transform test` loads its own --config (cmd_transform); here only for logging.
        settings = Settings() if args.command == "transform" else _settings(args)
    except ConfigError as exc:
        return _config_error(exc)
    configure_logging(args.log_level or settings.log.level, component=args.command)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _config_error(exc)


def _config_error(exc: ConfigError) -> int:
    """One stderr line per problem (field, value, source, rule); no traceback."""
    for line in str(exc).splitlines():
        print(f"aetherstream: config error: {line}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
