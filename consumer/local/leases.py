"""The KCL lease table, prepared before the daemon starts (local stack only).

KCL 2.5.8 waits a random 1-30 s (hardcoded) while its lease table is empty before it runs its
first shard sync (`Scheduler.shouldInitiateLeaseSync`). A table that already holds leases skips
that wait and the initial sync, and the lease taker takes unowned leases on its first pass. So
the local stack writes exactly what KCL's own shard sync would write for a fresh stream; the
schema and attributes were read back from a table KCL created against dynalite.
"""

from __future__ import annotations

from typing import Any

# KCL's CreateTable for the lease table (the table name is the applicationName).
TABLE_SCHEMA: dict[str, Any] = {
    "KeySchema": [{"AttributeName": "leaseKey", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "leaseKey", "AttributeType": "S"}],
    "BillingMode": "PAY_PER_REQUEST",
}


class NotFreshStream(ValueError):
    """The stream has closed shards: its leases need KCL's own ancestry walk."""


def lease_item(shard: dict[str, Any]) -> dict[str, Any]:
    """The unowned TRIM_HORIZON lease KCL's shard sync writes for one open shard (DynamoDB
    attribute-value form, as DynamoDBLeaseSerializer writes it: no leaseOwner yet)."""
    hash_range = shard["HashKeyRange"]
    item: dict[str, Any] = {
        "leaseKey": {"S": shard["ShardId"]},
        "checkpoint": {"S": "TRIM_HORIZON"},
        "checkpointSubSequenceNumber": {"N": "0"},
        "leaseCounter": {"N": "0"},
        "ownerSwitchesSinceCheckpoint": {"N": "0"},
        "startingHashKey": {"S": hash_range["StartingHashKey"]},
        "endingHashKey": {"S": hash_range["EndingHashKey"]},
    }
    parents = [p for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId")) if p]
    if parents:
        item["parentShardId"] = {"SS": parents}
    return item


def lease_items(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One lease per shard of a stream whose shards are all open (ListShards' form).

    A closed shard means the stream was resharded; its leases (parents first, checkpoints
    from TRIM_HORIZON down the lineage) are KCL's job, so refuse rather than guess.
    """
    closed = [s["ShardId"] for s in shards
              if s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")]
    if closed:
        raise NotFreshStream(f"closed shards {closed}: leave the leases to KCL's shard sync")
    return [lease_item(s) for s in shards]
