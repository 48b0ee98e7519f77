"""What `bench processor` reads from the local stack: servers' CPU, S3 objects, the lease table.

The lease table is what the KCL daemon keeps (named like the application, key `leaseKey`),
with the one lease the benchmark's worker owns, so a processor that checks ownership before
it writes (a consistent GetItem) finds what it would find under the daemon.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from consumer.bench.stats import CpuTimes, tree_seconds
from consumer.config import Settings
from consumer.records.model import Position

# Server processes are told apart by their command lines (LocalStack only exposes pids).
_SERVER_NAMES = (("moto", "moto"), ("dynalite", "dynalite"), ("kinesis", "kinesis-mock"),
                 ("osmem", "osmem"), ("postgres", "postgres"))


def server_name(cmdline: Iterable[str]) -> str:
    text = " ".join(cmdline)
    return next((name for needle, name in _SERVER_NAMES if needle in text), text[:20] or "?")


class ServerMeter:
    """CPU seconds of each server's process tree (PostgreSQL's backends included)."""

    def __init__(self, pids: Iterable[int]) -> None:
        self._procs: dict[str, psutil.Process] = {}
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                self._procs[server_name(proc.cmdline())] = proc

    def sample(self) -> dict[str, float]:
        return {name: tree_seconds(tree_times(proc)) for name, proc in self._procs.items()}


def cpu_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def tree_times(root: psutil.Process) -> list[CpuTimes]:
    """CPU times of a process and its live descendants (none if it has gone)."""
    out: list[CpuTimes] = []
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            out.append(CpuTimes(t.user, t.system, t.children_user, t.children_system))
    return out


def object_sizes(s3: Any, bucket: str, prefixes: Mapping[str, str]) -> dict[str, list[int]]:
    """Object sizes under each named prefix; others by their key's first segment."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            name = next((n for n, p in prefixes.items() if key.startswith(p)),
                        key.split("/", 1)[0] + "/")
            sizes[name].append(int(obj["Size"]))
    return sizes


def create_lease_table(dynamodb: Any, table: str) -> None:
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.get_waiter("table_exists").wait(TableName=table,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})


def put_fresh_lease(dynamodb: Any, table: str, shard_id: str, worker_id: str) -> None:
    """The lease as KCL leaves it for a shard that has never been checkpointed."""
    dynamodb.put_item(TableName=table, Item={
        "leaseKey": {"S": shard_id},
        "leaseOwner": {"S": worker_id},
        "leaseCounter": {"N": "1"},
        "checkpoint": {"S": "TRIM_HORIZON"},
        "checkpointSubSequenceNumber": {"N": "0"},
        "ownerSwitchesSinceCheckpoint": {"N": "0"},
    })


def record_checkpoint(dynamodb: Any, table: str, shard_id: str, position: Position) -> None:
    """What the daemon writes on a checkpoint (it also bumps leaseCounter; the benchmark's
    lease never changes hands, so it keeps the counter a fencing reader may compare)."""
    dynamodb.update_item(
        TableName=table, Key={"leaseKey": {"S": shard_id}},
        UpdateExpression="SET #c = :c, checkpointSubSequenceNumber = :s, "
                         "ownerSwitchesSinceCheckpoint = :z",
        ExpressionAttributeNames={"#c": "checkpoint"},
        ExpressionAttributeValues={":c": {"S": str(position.sequence)},
                                   ":s": {"N": str(position.sub_sequence)}, ":z": {"N": "0"}},
    )


def lease_checkpoint(dynamodb: Any, table: str, shard_id: str) -> Position | None:
    item = dynamodb.get_item(TableName=table, Key={"leaseKey": {"S": shard_id}},
                             ConsistentRead=True).get("Item", {})
    seq = item.get("checkpoint", {}).get("S", "")
    if not seq.isdigit():
        return None
    return Position(int(seq), int(item.get("checkpointSubSequenceNumber", {}).get("N", "0")))


@dataclass(frozen=True)
class Holdings:
    """What the sinks hold after a run, read back by identity (consumer/local/reconcile.py)."""

    archived: int  # distinct records
    quarantined: int  # distinct records rejected outright (late ones are also archived)
    late: int
    duplicates: int  # archive and quarantine lines beyond the first of an identity
    result_rows: int
    result_ids: int
    records_in_results: int
    warehouse: dict[str, int] = field(default_factory=dict)  # Redshift tables, OpenSearch

    def problems(self, sent: int) -> list[str]:
        """Reconciliation failures: losses, duplicates, windows short of the archive."""
        out = []
        if self.archived + self.quarantined != sent:
            out.append(f"archived {self.archived} + quarantined {self.quarantined} != {sent}")
        if self.duplicates or self.result_rows != self.result_ids:
            out.append(f"{self.duplicates} duplicate records, "
                       f"{self.result_rows - self.result_ids} duplicate results")
        if self.result_rows and self.records_in_results + self.late != self.archived:
            out.append(f"results hold {self.records_in_results} + late {self.late} "
                       f"!= archived {self.archived}")
        expected = {"raw_records": self.archived, "window_results": self.result_ids,
                    "opensearch": self.result_ids}
        out += [f"{name} holds {n}, expected {expected[name]}"
                for name, n in self.warehouse.items() if n != expected.get(name, n)]
        return out


def holdings(s3: Any, settings: Settings) -> Holdings:
    from consumer.local.reconcile import (
        ObjectCounter,
        opensearch_count,
        redshift_counts,
        s3_result_rows,
    )

    s = settings.s3
    archive = ObjectCounter(s3, s.bucket, s.archive_prefix)
    quarantine = ObjectCounter(s3, s.bucket, s.quarantine_prefix)
    for counter in (archive, quarantine):
        counter.refresh()
    results = s3_result_rows(s3, s.bucket, s.results_prefix)
    warehouse: dict[str, int] = {}
    if settings.redshift.enabled:
        counts = redshift_counts(settings.redshift.connect_dsn(), settings.redshift.schema)
        warehouse.update({name: c.rows for name, c in counts.items()})
    if settings.opensearch.enabled:
        warehouse["opensearch"] = opensearch_count(settings.opensearch.endpoint,
                                                   settings.opensearch.index_prefix)
    return Holdings(
        archived=archive.distinct,
        quarantined=quarantine.distinct_where(stage_is_window=False),
        late=quarantine.distinct_where(stage_is_window=True),
        duplicates=archive.duplicates + quarantine.duplicates,
        result_rows=len(results),
        result_ids=len({r["result_id"] for r in results}),
        records_in_results=sum(int(r["count"]) for r in results),
        warehouse=warehouse,
    )
