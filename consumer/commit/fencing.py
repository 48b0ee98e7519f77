"""Fencing: a worker that lost a shard must stop committing, even before KCL tells it.

`acquire` (in initialize) adds 1 to the shard's epoch in our DynamoDB table and keeps the
new value. `check` (before every flush, the commit step) is a conditional write that only
succeeds while the table still holds that epoch. A new owner's acquire bumps the epoch, so
the old owner's next check fails and it stops writing. The window left is one flush already
past its check; its writes are idempotent by identity, so it cannot duplicate anything.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError


class Fenced(Exception):
    """Another worker took the shard: this one must not write or checkpoint again."""


class ShardFence:
    def __init__(self, dynamodb: Any, table: str, shard_id: str, owner: str) -> None:
        self._ddb = dynamodb
        self._table = table
        self._key = {"shard_id": {"S": shard_id}}
        self._owner = owner
        self.epoch: int | None = None

    def acquire(self) -> int:
        resp = self._ddb.update_item(
            TableName=self._table, Key=self._key,
            UpdateExpression="ADD epoch :one SET #o = :owner",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={":one": {"N": "1"}, ":owner": {"S": self._owner}},
            ReturnValues="UPDATED_NEW",
        )
        self.epoch = int(resp["Attributes"]["epoch"]["N"])
        return self.epoch

    def check(self) -> None:
        if self.epoch is None:
            raise RuntimeError("fence checked before acquire")
        try:
            self._ddb.update_item(
                TableName=self._table, Key=self._key,
                UpdateExpression="SET last_commit_ms = :now",
                ConditionExpression="epoch = :mine",
                ExpressionAttributeValues={":mine": {"N": str(self.epoch)},
                                           ":now": {"N": str(int(time.time() * 1000))}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise Fenced(f"epoch {self.epoch} superseded") from exc
            raise


def create_table(dynamodb: Any, table: str) -> None:
    """Idempotent; on-demand billing (a few writes per shard per flush)."""
    try:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "shard_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "shard_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
            raise
        return
    dynamodb.get_waiter("table_exists").wait(TableName=table,
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})
