"""What `bench processor` reads from the local stack: servers' CPU, S3 objects, the lease table.

The lease table is what the KCL daemon keeps (named like the application, key `leaseKey`),
with the one lease the benchmark's worker owns, so a processor that checks ownership before
it writes (a consistent GetItem) finds what it would find under the daemon.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import psutil

from consumer.bench.stats import CpuTimes, tree_seconds
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
