"""opensearch-py errors raised by a real osmem-server (the OpenSearch stand-in), classified:
a missing index (404 index_not_found_exception) and a document its mapping rejects (400),
both as a whole request and as a _bulk item. Throttling and 5xx come from a stub in the
unit tests, because osmem-server does not throttle."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opensearchpy import exceptions as os_exc

from consumer.sinks.clients import opensearch_client
from consumer.sinks.errors import ErrorKind, classify, describe, opensearch_item_kind
from tests.support.servers import osmem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with osmem() as url:
        client = opensearch_client(url, auth="none", service="es", region="us-east-1",
                                   timeout_s=10)
        client.indices.create(index="typed", body={"mappings": {"properties": {
            "n": {"type": "long"}}}})
        yield client


def test_missing_index_is_fatal(client: Any) -> None:
    with pytest.raises(os_exc.NotFoundError) as info:
        client.get(index="absent", id="1")
    assert info.value.status_code == 404
    assert "index_not_found_exception" in str(info.value.error) + str(info.value.info)
    assert classify(info.value) is ErrorKind.NOT_FOUND
    assert describe(info.value).startswith("NotFoundError[404 ")


def test_mapping_rejection_is_fatal(client: Any) -> None:
    with pytest.raises(os_exc.RequestError) as info:
        client.index(index="typed", id="1", body={"n": "not a number"})
    assert info.value.status_code == 400
    assert classify(info.value) is ErrorKind.INVALID


def test_bulk_item_rejection_is_fatal(client: Any) -> None:
    body = [
        {"index": {"_index": "typed", "_id": "ok"}}, {"n": 1},
        {"index": {"_index": "typed", "_id": "bad"}}, {"n": "not a number"},
    ]
    resp = client.bulk(body=body)
    statuses = [item["index"]["status"] for item in resp["items"]]
    assert statuses[0] in (200, 201)
    assert statuses[1] == 400
    assert opensearch_item_kind(statuses[1]) is ErrorKind.INVALID
    assert opensearch_item_kind(429) is ErrorKind.THROTTLING
