"""consumer.aws: client bounds and put_records' classification-based retry loop.

put_records runs against moto's Kinesis for the plain path, and against a stub speaking
Kinesis' JSON protocol for partial failures and throttling, which no emulator can be told
to produce on cue. The stub scripts its answers per call and records what it was sent, so
the tests compare which records were resent by content.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as boto_exc
import botocore.loaders
import pytest

from consumer.aws import PutRecordsError, client, client_config, model_loader, put_records
from consumer.sinks.errors import is_retryable
from tests.support.stub_servers import Answer, Seen, scripted_http_server, silent_server

JSON = {"Content-Type": "application/x-amz-json-1.1"}


@pytest.fixture(autouse=True)
def _dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _entries(n: int) -> list[dict[str, Any]]:
    return [{"Data": f"record-{i}".encode(), "PartitionKey": f"pk-{i}"} for i in range(n)]


def _sent(request: Seen) -> list[str]:
    return [base64.b64decode(r["Data"]).decode() for r in json.loads(request.body)["Records"]]


def _ok(n: int) -> dict[str, Any]:
    return {"SequenceNumber": str(n), "ShardId": "shardId-000000000000"}


def _answer(records: list[dict[str, Any]]) -> Answer:
    failed = sum("ErrorCode" in r for r in records)
    return 200, JSON, json.dumps({"FailedRecordCount": failed, "Records": records}).encode()


THROTTLED = {"ErrorCode": "ProvisionedThroughputExceededException",
             "ErrorMessage": "Rate exceeded for shard shardId-000000000000"}


class Script:
    """Answers PutRecords from a list of functions of the request, one per call."""

    def __init__(self, *steps: Any) -> None:
        self.steps = list(steps)

    def __call__(self, request: Seen) -> Answer:
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step(request)  # type: ignore[no-any-return]


@pytest.fixture
def stub() -> Iterator[Any]:
    holder: dict[str, Script] = {}
    with scripted_http_server(lambda r: holder["script"](r)) as http:
        def kinesis(script: Script) -> Any:
            holder["script"] = script
            return client("kinesis", endpoint_url=http.url, config=client_config(max_attempts=1))
        yield kinesis, http


def test_throttled_entries_are_resent_alone(stub: Any) -> None:
    make, http = stub

    def first(req: Seen) -> Answer:  # entries 1 and 3 throttled
        return _answer([THROTTLED if i in (1, 3) else _ok(i) for i in range(len(_sent(req)))])

    put_records(make(Script(first, lambda req: _answer([_ok(0)] * len(_sent(req))))), "s",
                _entries(5))
    assert [_sent(r) for r in http.requests] == [
        [f"record-{i}" for i in range(5)], ["record-1", "record-3"]]


def test_rejected_entries_raise_without_retrying(stub: Any) -> None:
    make, http = stub
    bad = {"ErrorCode": "KMSAccessDeniedException", "ErrorMessage": "denied by key policy"}
    with pytest.raises(PutRecordsError, match=r"1 of 2 records rejected.*KMSAccessDenied"):
        put_records(make(Script(lambda req: _answer([_ok(0), bad]))), "s", _entries(2))
    assert len(http.requests) == 1


def test_throttling_is_bounded(stub: Any) -> None:
    make, http = stub
    always = Script(lambda req: _answer([THROTTLED] * len(_sent(req))))
    with pytest.raises(PutRecordsError, match="2 records still failing after 3 attempts"):
        put_records(make(always), "s", _entries(2), max_attempts=3)
    assert len(http.requests) == 3


def _error(code: str, status: int) -> Any:
    return lambda req: (status, JSON, json.dumps({"__type": code, "message": code}).encode())


def test_whole_call_throttling_is_retried_then_succeeds(stub: Any) -> None:
    make, http = stub
    script = Script(_error("ThrottlingException", 400), _error("InternalFailure", 500),
                    lambda req: _answer([_ok(0)] * len(_sent(req))))
    put_records(make(script), "s", _entries(3))
    assert len(http.requests) == 3
    assert _sent(http.requests[2]) == ["record-0", "record-1", "record-2"]


def test_whole_call_fatal_error_is_raised_at_once(stub: Any) -> None:
    make, http = stub
    with pytest.raises(boto_exc.ClientError) as info:
        put_records(make(Script(_error("AccessDeniedException", 400))), "s", _entries(1))
    assert info.value.response["Error"]["Code"] == "AccessDeniedException"
    assert len(http.requests) == 1


def test_whole_call_retryable_error_past_the_bound_keeps_its_cause(stub: Any) -> None:
    make, http = stub
    with pytest.raises(PutRecordsError, match="not sent after 2 attempts") as info:
        put_records(make(Script(_error("ThrottlingException", 400))), "s", _entries(1),
                    max_attempts=2)
    assert isinstance(info.value.__cause__, boto_exc.ClientError)
    assert is_retryable(info.value)  # judged by its cause: a caller may back off and retry
    assert len(http.requests) == 2


def test_put_records_against_moto_kinesis() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        kinesis = client("kinesis", endpoint_url=f"http://{host}:{port}")
        kinesis.create_stream(StreamName="s", ShardCount=1)
        kinesis.get_waiter("stream_exists").wait(StreamName="s",
                                                 WaiterConfig={"Delay": 0.1})
        put_records(kinesis, "s", _entries(3))
        shard = kinesis.list_shards(StreamName="s")["Shards"][0]["ShardId"]
        it = kinesis.get_shard_iterator(StreamName="s", ShardId=shard,
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        got = [r["Data"].decode() for r in kinesis.get_records(ShardIterator=it)["Records"]]
        with pytest.raises(boto_exc.ClientError) as info:
            put_records(kinesis, "absent", _entries(1))
    finally:
        server.stop()
    assert got == ["record-0", "record-1", "record-2"]
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_client_defaults_are_bounded() -> None:
    config = client("kinesis").meta.config
    assert (config.connect_timeout, config.read_timeout) == (5.0, 30.0)
    assert config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert config.tcp_keepalive is True


def test_read_timeout_and_attempts_are_enforced() -> None:
    with silent_server() as silent:
        s3 = client("s3", endpoint_url=f"http://127.0.0.1:{silent.port}",
                    config=client_config(read_timeout_s=0.3, max_attempts=3))
        start = time.monotonic()
        with pytest.raises(boto_exc.ReadTimeoutError):
            s3.list_buckets()
        elapsed = time.monotonic() - start
        assert silent.accepted == 3
    assert 0.9 <= elapsed < 5.0


def test_invalid_bounds_are_rejected() -> None:
    for bad in ({"connect_timeout_s": 0}, {"read_timeout_s": -1}, {"max_attempts": 0}):
        with pytest.raises(ValueError, match="invalid AWS client bounds"):
            client_config(**bad)
    assert boto3  # boto3 is what client() builds on


# The services and model types our clients load (consumer/aws.py's clients, the local stack's).
LOADED_MODELS = [(service, kind) for service in ("s3", "dynamodb", "kinesis", "cloudwatch")
                 for kind in ("service-2", "endpoint-rule-set-1")]


@pytest.mark.parametrize(("service", "kind"), LOADED_MODELS)
def test_model_loader_loads_what_botocore_loads(service: str, kind: str) -> None:
    # botocore's own loader (stdlib json, every service listed first) is the reference.
    assert model_loader().load_service_model(service, kind) == \
        botocore.loaders.Loader().load_service_model(service, kind)


def test_model_loader_lists_one_service_not_all(monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[str] = []
    real_listdir = os.listdir

    def listdir(path: str) -> list[str]:
        listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    model_loader().load_service_model("s3", "service-2")
    ours = len(listed)
    listed.clear()
    botocore.loaders.Loader().load_service_model("s3", "service-2")
    assert ours <= 3 and len(listed) > 100  # botocore lists every service's directory


def test_model_loader_names_an_unknown_service_as_botocore_does() -> None:
    with pytest.raises(boto_exc.UnknownServiceError, match=r"Valid service names are: .*dynamodb"):
        model_loader().load_service_model("no-such-service", "service-2")
