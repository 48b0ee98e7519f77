"""Error classification against exceptions the libraries really raise.

botocore: ClientErrors parsed by botocore itself from raw HTTP error answers in each wire
protocol (JSON for Kinesis, REST-XML for S3, EC2's query XML), served by a stub HTTP server
because no emulator can be told to throttle or fail with a chosen code; real connection
failures from a real client against misbehaving loopback sockets; and moto's own S3/IAM
answers for NoSuchBucket, AccessDenied, InvalidAccessKeyId and SignatureDoesNotMatch.
opensearch-py: TransportError 429/503/401 from a stub answering those statuses (osmem-server
does not throttle), and connection errors from real sockets. OS, urllib3 and programming
errors are raised by really running the failing operation.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions as boto_exc
import orjson
import pytest
import urllib3
from botocore.config import Config
from botocore.retries.standard import ThrottledRetryableChecker, TransientRetryableChecker
from opensearchpy import exceptions as os_exc

from consumer.sinks.clients import opensearch_client
from consumer.sinks.errors import (
    RETRYABLE_KINDS,
    THROTTLING_CODES,
    TIMEOUT_CODES,
    ErrorKind,
    classify,
    describe,
    is_retryable,
)
from tests.support.stub_servers import (
    OPENSEARCH_429,
    OPENSEARCH_503,
    Answer,
    Seen,
    backlogged_server,
    closed_port,
    closing_server,
    json_answer,
    scripted_http_server,
    silent_server,
    status_server,
)

ONE_SHOT = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=0.5,
                  read_timeout=0.5, s3={"addressing_style": "path"})


@pytest.fixture(autouse=True)
def _dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _raised(op: Any) -> BaseException:
    try:
        op()
    except Exception as exc:
        return exc
    raise AssertionError("expected the operation to fail")


# ---------------------------------------------------------------- botocore ClientError

# (code, HTTP status, expected kind): the answer each service really sends for that code.
JSON_CASES = [
    ("ThrottlingException", 400, ErrorKind.THROTTLING),
    ("ProvisionedThroughputExceededException", 400, ErrorKind.THROTTLING),
    ("LimitExceededException", 400, ErrorKind.THROTTLING),
    ("TooManyRequestsException", 429, ErrorKind.THROTTLING),
    ("InternalFailure", 500, ErrorKind.UNAVAILABLE),
    ("ServiceUnavailable", 503, ErrorKind.UNAVAILABLE),
    ("SomeNewServerFault", 502, ErrorKind.UNAVAILABLE),  # unknown code: the status decides
    ("AccessDeniedException", 400, ErrorKind.AUTH),
    ("UnrecognizedClientException", 400, ErrorKind.AUTH),
    ("ExpiredTokenException", 400, ErrorKind.AUTH),
    ("ResourceNotFoundException", 400, ErrorKind.NOT_FOUND),
    ("ValidationException", 400, ErrorKind.INVALID),
    ("SomeNewClientFault", 400, ErrorKind.INVALID),
]
XML_CASES = [
    ("SlowDown", 503, ErrorKind.THROTTLING),
    ("InternalError", 500, ErrorKind.UNAVAILABLE),
    ("ServiceUnavailable", 503, ErrorKind.UNAVAILABLE),
    ("RequestTimeout", 400, ErrorKind.TIMEOUT),
    ("AccessDenied", 403, ErrorKind.AUTH),
    ("InvalidAccessKeyId", 403, ErrorKind.AUTH),
    ("SignatureDoesNotMatch", 403, ErrorKind.AUTH),
    ("ExpiredToken", 400, ErrorKind.AUTH),
    ("NoSuchBucket", 404, ErrorKind.NOT_FOUND),
    ("NoSuchKey", 404, ErrorKind.NOT_FOUND),
    ("InvalidArgument", 400, ErrorKind.INVALID),
]


def _aws_error_answer(request: Seen) -> Answer:
    """The error named in the request: Kinesis' StreamName, S3's key, EC2's Filter value."""
    if request.headers.get("x-amz-target", "").startswith("Kinesis_"):
        stream = json.loads(request.body)["StreamName"]
        code, status = stream.split("--")
        body = {"__type": code, "message": f"injected {code}"}
        return status_int(status), {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(
            body
        ).encode()
    if request.path.startswith("/bucket/"):
        code, status = request.path.removeprefix("/bucket/").split("--")
        xml = (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>injected {code}</Message><RequestId>R1</RequestId></Error>"
        )
        return status_int(status), {"Content-Type": "application/xml"}, xml.encode()
    xml = (
        "<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error>"
        "<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error>"
        "</Errors><RequestID>R2</RequestID></Response>"
    )
    return 503, {"Content-Type": "text/xml"}, xml.encode()


def status_int(text: str) -> int:
    return int(text)


@pytest.fixture(scope="module")
def aws_stub() -> Iterator[str]:
    with scripted_http_server(_aws_error_answer) as stub:
        yield stub.url


def _client(service: str, url: str) -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", config=ONE_SHOT)


@pytest.mark.parametrize(("code", "status", "kind"), JSON_CASES)
def test_kinesis_client_errors(aws_stub: str, code: str, status: int, kind: ErrorKind) -> None:
    kinesis = _client("kinesis", aws_stub)
    exc = _raised(
        lambda: kinesis.put_record(StreamName=f"{code}--{status}", Data=b"x", PartitionKey="k")
    )
    assert isinstance(exc, boto_exc.ClientError)
    assert exc.response["Error"]["Code"] == code
    assert classify(exc) is kind
    assert is_retryable(exc) is (kind in RETRYABLE_KINDS)


@pytest.mark.parametrize(("code", "status", "kind"), XML_CASES)
def test_s3_client_errors(aws_stub: str, code: str, status: int, kind: ErrorKind) -> None:
    s3 = _client("s3", aws_stub)
    exc = _raised(lambda: s3.get_object(Bucket="bucket", Key=f"{code}--{status}"))
    assert isinstance(exc, boto_exc.ClientError)
    assert exc.response["Error"]["Code"] == code
    assert classify(exc) is kind


def test_ec2_request_limit_exceeded_is_throttling(aws_stub: str) -> None:
    exc = _raised(lambda: _client("ec2", aws_stub).describe_instances())
    assert isinstance(exc, boto_exc.ClientError)
    assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
    assert classify(exc) is ErrorKind.THROTTLING


def test_every_code_botocore_retries_is_retryable_here() -> None:
    """botocore's standard-mode lists; fails when a botocore upgrade adds a code we lack."""
    assert set(ThrottledRetryableChecker._THROTTLED_ERROR_CODES) <= THROTTLING_CODES
    transient = set(TransientRetryableChecker._TRANSIENT_ERROR_CODES)
    assert transient <= THROTTLING_CODES | TIMEOUT_CODES


# ---------------------------------------------------------------- botocore connection failures


def test_connection_refused_is_retryable() -> None:
    exc = _raised(lambda: _client("s3", f"http://127.0.0.1:{closed_port()}").list_buckets())
    assert isinstance(exc, boto_exc.EndpointConnectionError)
    assert classify(exc) is ErrorKind.CONNECTION


def test_read_timeout_is_retryable() -> None:
    with silent_server() as silent:
        exc = _raised(lambda: _client("s3", f"http://127.0.0.1:{silent.port}").list_buckets())
    assert isinstance(exc, boto_exc.ReadTimeoutError)
    assert classify(exc) is ErrorKind.TIMEOUT


def test_connect_timeout_is_retryable() -> None:
    with backlogged_server() as port:
        exc = _raised(lambda: _client("s3", f"http://127.0.0.1:{port}").list_buckets())
    assert isinstance(exc, boto_exc.ConnectTimeoutError)
    assert classify(exc) is ErrorKind.TIMEOUT


def test_connection_closed_is_retryable() -> None:
    with closing_server() as port:
        exc = _raised(lambda: _client("s3", f"http://127.0.0.1:{port}").list_buckets())
    assert isinstance(exc, boto_exc.ConnectionClosedError)
    assert classify(exc) is ErrorKind.CONNECTION


def test_missing_credentials_are_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    client = boto3.Session().client("s3", endpoint_url=f"http://127.0.0.1:{closed_port()}",
                                    region_name="us-east-1", config=ONE_SHOT)
    exc = _raised(client.list_buckets)
    assert isinstance(exc, boto_exc.NoCredentialsError)
    assert not is_retryable(exc)


def test_param_validation_is_a_programming_error(aws_stub: str) -> None:
    exc = _raised(lambda: _client("s3", aws_stub).get_object(Bucket="b"))  # Key missing
    assert isinstance(exc, boto_exc.ParamValidationError)
    assert classify(exc) is ErrorKind.PROGRAMMING


# ---------------------------------------------------------------- moto's own answers


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# moto's answers, not timeouts, are under test: its first request to a service loads that
# backend, which took over ONE_SHOT's 0.5 s on a loaded machine (a ReadTimeoutError instead).
MOTO_ONE_SHOT = ONE_SHOT.merge(Config(read_timeout=30))


def _moto(service: str, url: str, key: str = "test", secret: str = "test") -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        config=MOTO_ONE_SHOT, aws_access_key_id=key,
                        aws_secret_access_key=secret)


def test_moto_no_such_bucket_is_fatal(moto_url: str) -> None:
    exc = _raised(lambda: _moto("s3", moto_url).get_object(Bucket="absent", Key="k"))
    assert isinstance(exc, boto_exc.ClientError)
    assert exc.response["Error"]["Code"] == "NoSuchBucket"
    assert classify(exc) is ErrorKind.NOT_FOUND


def _set_moto_auth(url: str, free_actions: str) -> None:
    # moto's server-mode switch: after `free_actions` requests, IAM is enforced.
    pool = urllib3.PoolManager()
    resp = pool.request("POST", f"{url}/moto-api/reset-auth", body=free_actions.encode())
    assert resp.status == 200, resp.data


def test_moto_auth_failures_are_fatal(moto_url: str) -> None:
    _set_moto_auth(moto_url, "2")
    try:
        iam = _moto("iam", moto_url)
        iam.create_user(UserName="nobody")  # free action 1
        key = iam.create_access_key(UserName="nobody")["AccessKey"]  # free action 2
        key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
        failures = {
            "AccessDenied": lambda: _moto("s3", moto_url, key_id, secret).list_buckets(),
            "InvalidAccessKeyId": lambda: _moto("s3", moto_url, "AKIAUNKNOWN00000000", "x")
            .list_buckets(),
            "SignatureDoesNotMatch": lambda: _moto("s3", moto_url, key_id, "wrong").list_buckets(),
        }
        for code, op in failures.items():
            exc = _raised(op)
            assert isinstance(exc, boto_exc.ClientError)
            assert exc.response["Error"]["Code"] == code
            assert classify(exc) is ErrorKind.AUTH, describe(exc)
    finally:
        _set_moto_auth(moto_url, "inf")


# ---------------------------------------------------------------- opensearch-py


def _os(url: str, timeout_s: float = 2.0) -> Any:
    return opensearch_client(url, auth="none", service="es", region="us-east-1",
                             timeout_s=timeout_s)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, OPENSEARCH_429, ErrorKind.THROTTLING),
        (503, OPENSEARCH_503, ErrorKind.UNAVAILABLE),
        (401, {"error": "unauthorized"}, ErrorKind.AUTH),
        (403, {"message": "User: anonymous is not authorized"}, ErrorKind.AUTH),
        (413, {"error": "request entity too large"}, ErrorKind.INVALID),
    ],
)
def test_opensearch_statuses(status: int, body: Any, kind: ErrorKind) -> None:
    with status_server(status, body) as stub:
        exc = _raised(lambda: _os(stub.url).index(index="i", id="1", body={"a": 1}))
        assert len(stub.requests) == 1  # the client itself does not retry
    assert isinstance(exc, os_exc.TransportError)
    assert exc.status_code == status
    assert classify(exc) is kind


def test_opensearch_connection_refused_and_timeout() -> None:
    refused = _raised(lambda: _os(f"http://127.0.0.1:{closed_port()}").info())
    assert isinstance(refused, os_exc.ConnectionError)
    assert classify(refused) is ErrorKind.CONNECTION
    with silent_server() as silent:
        hung = _raised(lambda: _os(f"http://127.0.0.1:{silent.port}", timeout_s=0.3).info())
    assert isinstance(hung, os_exc.ConnectionTimeout)
    assert classify(hung) is ErrorKind.TIMEOUT


# ---------------------------------------------------------------- urllib3, OS, our own code


def test_urllib3_errors() -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    bare = _raised(lambda: urllib3.PoolManager().request("GET", url, retries=False))
    assert isinstance(bare, urllib3.exceptions.NewConnectionError)
    wrapped = _raised(lambda: urllib3.PoolManager().request("GET", url, retries=0))
    assert isinstance(wrapped, urllib3.exceptions.MaxRetryError)
    with silent_server() as silent:
        hung = _raised(lambda: urllib3.PoolManager().request(
            "GET", f"http://127.0.0.1:{silent.port}/", retries=False, timeout=0.2))
    assert isinstance(hung, urllib3.exceptions.ReadTimeoutError)
    assert [classify(e) for e in (bare, wrapped, hung)] == [
        ErrorKind.CONNECTION, ErrorKind.CONNECTION, ErrorKind.TIMEOUT]


def test_socket_errors() -> None:
    refused = _raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=1))
    assert isinstance(refused, ConnectionRefusedError)
    with silent_server() as silent, socket.create_connection(("127.0.0.1", silent.port)) as s:
        s.settimeout(0.1)
        hung = _raised(lambda: s.recv(1))
    assert isinstance(hung, TimeoutError)
    assert classify(refused) is ErrorKind.CONNECTION
    assert classify(hung) is ErrorKind.TIMEOUT


def test_local_os_errors_are_fatal(tmp_path: Any) -> None:
    missing = _raised(lambda: (tmp_path / "absent").read_bytes())
    assert isinstance(missing, FileNotFoundError)
    assert not is_retryable(missing)


def test_programming_errors_are_fatal() -> None:
    errors = [
        _raised(lambda: {}["absent"]),
        _raised(lambda: [][1]),
        _raised(lambda: int("twelve")),
        _raised(lambda: None.upper()),  # type: ignore[attr-defined]
        _raised(lambda: "a" + 1),  # type: ignore[operator]
        _raised(lambda: "\ud800".encode()),
        _raised(lambda: orjson.dumps({"extra": "\ud800"})),  # issue 10's Parquet stall
        _raised(lambda: 1 / 0),
    ]
    assert [type(e).__name__ for e in errors] == [
        "KeyError", "IndexError", "ValueError", "AttributeError", "TypeError",
        "UnicodeEncodeError", "TypeError", "ZeroDivisionError"]
    assert isinstance(errors[6], orjson.JSONEncodeError)
    assert {classify(e) for e in errors} == {ErrorKind.PROGRAMMING}
    assert not any(is_retryable(e) for e in errors)


def test_unknown_errors_are_fatal_and_wrappers_keep_their_cause() -> None:
    def wrap(cause: BaseException) -> BaseException:
        try:
            raise RuntimeError("flush failed") from cause
        except RuntimeError as exc:
            return exc

    reset = _raised(lambda: socket.create_connection(("127.0.0.1", closed_port()), timeout=1))
    assert not is_retryable(RuntimeError("unknown"))
    assert is_retryable(wrap(reset))
    assert not is_retryable(wrap(_raised(lambda: {}["k"])))
    # An error raised while handling another (implicit context) is judged on its own.
    try:
        try:
            raise reset
        except ConnectionError:
            {}["k"]
    except KeyError as exc:
        assert exc.__context__ is reset
        assert not is_retryable(exc)


def test_describe_is_one_line_with_class_code_kind_and_message(aws_stub: str) -> None:
    kinesis = _client("kinesis", aws_stub)
    exc = _raised(lambda: kinesis.put_record(StreamName="AccessDeniedException--400", Data=b"x",
                                             PartitionKey="k"))
    text = describe(exc)
    assert text.startswith("AccessDeniedException (auth): "), text  # botocore's modeled class
    assert "injected AccessDeniedException" in text
    unmodeled = _raised(lambda: kinesis.put_record(StreamName="SomeNewFault--400", Data=b"x",
                                                   PartitionKey="k"))
    assert describe(unmodeled).startswith("ClientError[SomeNewFault] (invalid): ")
    multi = describe(ValueError("line one\n  line two " + "x" * 500), max_chars=80)
    assert "\n" not in multi
    assert multi.startswith("ValueError (programming): line one line two x")
    assert multi.endswith("...")
    assert len(multi) == len("ValueError (programming): ") + 80
    assert json_answer(200, {})[0] == 200  # the stub helper the module relies on


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        ("ThrottlingException", ErrorKind.THROTTLING),
        ("KinesisClientLibDependencyException", ErrorKind.UNAVAILABLE),
        ("ShutdownException", ErrorKind.LEASE_LOST),
        ("InvalidStateException", ErrorKind.INVALID),
        ("SomethingElse", ErrorKind.UNCLASSIFIED),
    ],
)
def test_kcl_checkpoint_errors(answer: str, kind: ErrorKind) -> None:
    """amazon-kclpy's own Checkpointer, reading the daemon's answer from its protocol stream."""
    import io

    from amazon_kclpy.kcl import Checkpointer, _IOHandler

    line = json.dumps({"action": "checkpoint", "sequenceNumber": "1", "subSequenceNumber": None,
                       "error": answer}) + "\n"
    checkpointer = Checkpointer(_IOHandler(io.StringIO(line), io.StringIO(), io.StringIO()))
    exc = _raised(lambda: checkpointer.checkpoint("1"))
    assert type(exc).__name__ == "CheckpointError"
    assert classify(exc) is kind
    assert describe(exc).startswith(f"CheckpointError[{answer}] ({kind}")
