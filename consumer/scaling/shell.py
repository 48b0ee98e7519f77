"""The I/O half of `aetherstream scale recommend`: Kinesis ListShards + CloudWatch
GetMetricData in, ShardLoads out, then the pure `recommend`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from consumer import aws
from consumer.scaling.model import Recommendation, ShardLoad, recommend

PERIOD_S = 60
# GetMetricData takes at most 500 queries per call; two per shard.
_SHARDS_PER_CALL = 250


def list_shards(kinesis: Any, stream: str) -> list[tuple[str, bool]]:
    """(shard id, is open) for every shard the stream still lists, open or closed."""
    out: list[tuple[str, bool]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        for shard in page.get("Shards", []):
            is_open = "EndingSequenceNumber" not in shard.get("SequenceNumberRange", {})
            out.append((shard["ShardId"], is_open))
        token = page.get("NextToken")
        if not token:
            return out
        kwargs = {"NextToken": token}  # ListShards refuses StreamName together with NextToken


def shard_metrics_enabled(kinesis: Any, stream: str) -> bool:
    """True when enhanced (shard-level) IncomingRecords and IncomingBytes are published."""
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    enabled: set[str] = set()
    for monitoring in summary.get("EnhancedMonitoring", []):
        enabled.update(monitoring.get("ShardLevelMetrics", []))
    return "ALL" in enabled or {"IncomingRecords", "IncomingBytes"} <= enabled


def _query(qid: str, metric: str, dims: dict[str, str]) -> dict[str, Any]:
    return {
        "Id": qid,
        "MetricStat": {
            "Metric": {"Namespace": "AWS/Kinesis", "MetricName": metric,
                       "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]},
            "Period": PERIOD_S,
            "Stat": "Sum",
        },
        "ReturnData": True,
    }


def peak_rates(cloudwatch: Any, queries: list[dict[str, Any]], start: datetime,
               end: datetime) -> dict[str, float]:
    """Per query id: the busiest minute's Sum divided by 60 (we size for the peak)."""
    peaks: dict[str, float] = {q["Id"]: 0.0 for q in queries}
    kwargs: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": start, "EndTime": end}
    while True:
        page = cloudwatch.get_metric_data(**kwargs)
        for result in page.get("MetricDataResults", []):
            values = [float(v) for v in result.get("Values", [])]
            if values:
                peaks[result["Id"]] = max(peaks[result["Id"]], max(values) / PERIOD_S)
        token = page.get("NextToken")
        if not token:
            return peaks
        kwargs["NextToken"] = token


def load_shards(kinesis: Any, cloudwatch: Any, stream: str, *, window: timedelta,
                now: datetime | None = None) -> tuple[list[ShardLoad], list[str]]:
    """The stream's shards with their peak ingest over `window`, plus notes on the source."""
    end = now or datetime.now(UTC)
    start = end - window
    shards = list_shards(kinesis, stream)
    if shard_metrics_enabled(kinesis, stream):
        loads = []
        for i in range(0, len(shards), _SHARDS_PER_CALL):
            chunk = shards[i:i + _SHARDS_PER_CALL]
            queries = []
            for n, (sid, _) in enumerate(chunk):
                dims = {"StreamName": stream, "ShardId": sid}
                queries += [_query(f"r{n}", "IncomingRecords", dims),
                            _query(f"b{n}", "IncomingBytes", dims)]
            peaks = peak_rates(cloudwatch, queries, start, end)
            loads += [ShardLoad(sid, is_open, peaks[f"r{n}"], peaks[f"b{n}"])
                      for n, (sid, is_open) in enumerate(chunk)]
        return loads, [f"load: shard-level IncomingRecords/IncomingBytes, peak minute of "
                       f"the last {window}"]
    dims = {"StreamName": stream}
    peaks = peak_rates(cloudwatch, [_query("r", "IncomingRecords", dims),
                                    _query("b", "IncomingBytes", dims)], start, end)
    n_open = sum(1 for _, is_open in shards if is_open) or 1
    # Without shard-level metrics the split is unknown; closed shards take no new records.
    loads = [ShardLoad(sid, is_open, peaks["r"] / n_open if is_open else 0.0,
                       peaks["b"] / n_open if is_open else 0.0) for sid, is_open in shards]
    return loads, [f"load: stream-level metrics (shard-level metrics are off), peak minute "
                   f"of the last {window}, spread evenly over open shards; hot shards "
                   "cannot be seen"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aetherstream scale recommend",
        description="Recommend the ECS task count for a stream from its shards and load.")
    p.add_argument("--stream", required=True, help="Kinesis stream name")
    p.add_argument("--region", help="AWS region (default: AWS_REGION, else us-east-1)")
    p.add_argument("--endpoint-url", help="endpoint for Kinesis and CloudWatch (emulators)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--records-per-task-per-s", type=float, default=5000.0,
                   help="records/s one task sustains (measure with aetherstream bench)")
    p.add_argument("--bytes-per-task-per-s", type=float, default=None,
                   help="bytes/s one task sustains (optional)")
    p.add_argument("--max-shards-per-task", type=int, default=8,
                   help="leases one task may hold (one Python process each)")
    p.add_argument("--headroom", type=float, default=0.7,
                   help="share of a task's capacity to plan for, in (0, 1]")
    p.add_argument("--window-minutes", type=int, default=60, help="look-back for the peak")
    return p


def _render(stream: str, rec: Recommendation, loads: Sequence[ShardLoad],
            as_json: bool) -> str:
    if as_json:
        doc = {"stream": stream, **asdict(rec), "shards": [asdict(s) for s in loads]}
        return json.dumps(doc, indent=2) + "\n"
    # The last reasoning line is "recommended tasks: N".
    return "".join(f"{line}\n" for line in rec.reasoning)


def main(argv: list[str] | None = None) -> int:
    """`aetherstream scale recommend`: 0 on success, 1 when AWS calls fail, 2 on bad usage.

    `argv` may start with "recommend": `aetherstream scale` passes its remainder unchanged.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["recommend"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    kwargs: dict[str, str] = {}
    if args.region:
        kwargs["region_name"] = args.region
    if args.endpoint_url:
        kwargs["endpoint_url"] = args.endpoint_url
    try:
        loads, notes = load_shards(aws.client("kinesis", **kwargs),
                                   aws.client("cloudwatch", **kwargs), args.stream,
                                   window=timedelta(minutes=args.window_minutes))
        rec = recommend(loads, records_per_task_per_s=args.records_per_task_per_s,
                        max_shards_per_task=args.max_shards_per_task,
                        bytes_per_task_per_s=args.bytes_per_task_per_s,
                        headroom=args.headroom)
    except (BotoCoreError, ClientError) as exc:
        sys.stderr.write(f"scale recommend: {exc}\n")
        return 1
    except ValueError as exc:
        sys.stderr.write(f"scale recommend: {exc}\n")
        return 2
    rec = replace(rec, reasoning=notes + rec.reasoning)
    sys.stdout.write(_render(args.stream, rec, loads, args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
