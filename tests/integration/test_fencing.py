"""Fencing against a DynamoDB protocol server (moto's, over real HTTP).

Stand-in: moto for DynamoDB, which evaluates ConditionExpression like DynamoDB does.
"""

from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from consumer.commit.fencing import Fenced, ShardFence, create_table
from tests.support.servers import S3Endpoint, moto_s3

TABLE = "app-fences"


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    with moto_s3() as endpoint:
        client = ddb(endpoint)
        create_table(client, TABLE)
        create_table(client, TABLE)  # idempotent
        yield client


def ddb(endpoint: S3Endpoint) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint.url, region_name="us-east-1",
                        aws_access_key_id="t", aws_secret_access_key="t")


def test_a_new_owner_fences_the_old_one(dynamodb: Any) -> None:
    old = ShardFence(dynamodb, TABLE, "shardId-1", "worker-a")
    new = ShardFence(dynamodb, TABLE, "shardId-1", "worker-b")
    assert old.acquire() == 1
    old.check()  # sole owner: commits go on
    assert new.acquire() == 2
    new.check()
    with pytest.raises(Fenced):
        old.check()


def test_shards_have_independent_epochs(dynamodb: Any) -> None:
    a = ShardFence(dynamodb, TABLE, "shardId-7", "w")
    b = ShardFence(dynamodb, TABLE, "shardId-8", "w")
    assert (a.acquire(), b.acquire()) == (1, 1)
    a.check()
    b.check()


def test_check_before_acquire_is_a_bug(dynamodb: Any) -> None:
    with pytest.raises(RuntimeError):
        ShardFence(dynamodb, TABLE, "shardId-9", "w").check()
