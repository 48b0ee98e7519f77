"""Shard ownership, read from KCL's own lease table (the thin shell).

KCL keeps one item per shard in a DynamoDB table named after the application: `leaseOwner` is
the worker id that holds the shard, `leaseCounter` grows on every take and renewal. A record
processor confirms, with a consistent read, that its worker still owns the shard before each
batch it makes durable and before each checkpoint. That check follows the lease itself, so a
processor that starts late can never lock out the real owner (the bug of the epoch table this
replaced: epochs were ordered by when `initialize` finished, not by lease ownership).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consumer.sinks.fence import Fenced, FenceToken


@dataclass(frozen=True, slots=True)
class Lease:
    shard_id: str
    owner: str | None
    counter: int


class LeaseTable:
    def __init__(self, dynamodb: Any, table: str) -> None:
        self._ddb = dynamodb
        self.table = table

    def read(self, shard_id: str) -> Lease | None:
        item = self._ddb.get_item(
            TableName=self.table, Key={"leaseKey": {"S": shard_id}}, ConsistentRead=True,
            ProjectionExpression="leaseOwner, leaseCounter",
        ).get("Item")
        if item is None:
            return None
        owner = item.get("leaseOwner", {}).get("S")
        return Lease(shard_id, owner, int(item.get("leaseCounter", {}).get("N", "0")))


class Ownership:
    """One processor's view of its shard: its worker id, and the token of its tenure."""

    def __init__(self, leases: LeaseTable, shard_id: str, worker_id: str, spawned_ns: int):
        if not worker_id:
            raise ValueError("worker id is empty: the supervisor hands it to its processors")
        self._leases = leases
        self.shard_id = shard_id
        self.worker_id = worker_id
        self.spawned_ns = spawned_ns
        self.token: FenceToken | None = None

    def claim(self) -> FenceToken:
        """At initialize: the token of this tenure, or Fenced if another worker owns the shard
        (this processor started after the lease moved on)."""
        lease = self._leases.read(self.shard_id)
        self._require_mine(lease)
        assert lease is not None
        self.token = FenceToken(self.worker_id, lease.counter, self.spawned_ns)
        return self.token

    def confirm(self) -> None:
        """Before a write or a checkpoint: Fenced unless this worker still holds the lease."""
        self._require_mine(self._leases.read(self.shard_id))

    def _require_mine(self, lease: Lease | None) -> None:
        owner = lease.owner if lease else None
        if owner != self.worker_id:
            raise Fenced(f"{self.shard_id} is leased to {owner!r}, not to {self.worker_id!r}")
