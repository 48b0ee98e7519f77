"""The template's staging-expiry custom resource: its inline Lambda code against moto's S3.

The code is taken from deploy/ecs/template.yaml as CloudFormation would deploy it, and run
here with CloudFormation's request events. Stand-ins: moto's server for S3 (no AWS account
here), and a local HTTP server for CloudFormation's pre-signed response URL, which records
the response the function PUTs. Lifecycle expiry itself is S3's; this checks the rules.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cfnlint.decode import cfn_yaml

from tests.support.servers import S3Endpoint, moto_s3

pytestmark = pytest.mark.integration

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy/ecs/template.yaml"
RULE_ID = "aetherstream-redshift-staging-expiry"
FOREIGN = {"ID": "keep-logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
           "Expiration": {"Days": 30}}


class _Responses(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_PUT(self) -> None:
        length = int(self.headers["Content-Length"])
        self.server.received.append(json.loads(self.rfile.read(length)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def responses() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Responses)
    httpd.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/response", httpd.received  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def function(s3: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    resources = cfn_yaml.load(str(TEMPLATE))["Resources"]
    code = resources["StagingExpiryFunction"]["Properties"]["Code"]["ZipFile"]
    (tmp_path / "index.py").write_text(code)
    for key, value in {"AWS_ENDPOINT_URL_S3": s3.url, "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("staging_expiry_index", tmp_path / "index.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, spec.name, module)
    return module


def _invoke(function: ModuleType, url: str, received: list[dict[str, Any]], kind: str,
            bucket: str, prefix: str = "staging/") -> dict[str, Any]:
    event = {"RequestType": kind, "ResponseURL": url, "StackId": "stack-1", "RequestId": kind,
             "LogicalResourceId": "StagingExpiry", "PhysicalResourceId": f"{bucket}/{RULE_ID}",
             "ResourceProperties": {"Bucket": bucket, "Prefix": prefix, "ExpirationDays": "1",
                                    "RuleId": RULE_ID}}
    if kind == "Create":
        del event["PhysicalResourceId"]
    function.handler(event, SimpleNamespace(log_stream_name="stream"))
    assert len(received) >= 1
    return received.pop()


def _rules(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        rules: list[dict[str, Any]] = client.get_bucket_lifecycle_configuration(
            Bucket=bucket)["Rules"]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"
        return []
    return sorted(rules, key=lambda r: str(r["ID"]))


def _ours(prefix: str) -> dict[str, Any]:
    return {"ID": RULE_ID, "Status": "Enabled", "Filter": {"Prefix": prefix},
            "Expiration": {"Days": 1}, "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}


def _shape(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("ID", "Status", "Filter", "Expiration", "AbortIncompleteMultipartUpload")
    return [{k: r[k] for k in keys if k in r} for r in rules]


def test_adds_updates_and_removes_only_its_rule(
    function: ModuleType, s3: S3Endpoint, responses: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = responses
    client = s3.client()
    client.create_bucket(Bucket="data")
    client.put_bucket_lifecycle_configuration(Bucket="data",
                                              LifecycleConfiguration={"Rules": [FOREIGN]})

    reply = _invoke(function, url, received, "Create", "data")
    assert (reply["Status"], reply["PhysicalResourceId"]) == ("SUCCESS", f"data/{RULE_ID}")
    assert (reply["StackId"], reply["RequestId"]) == ("stack-1", "Create")
    assert _shape(_rules(client, "data")) == [_ours("staging/"), FOREIGN]

    assert _invoke(function, url, received, "Update", "data", "stage-2/")["Status"] == "SUCCESS"
    assert _shape(_rules(client, "data")) == [_ours("stage-2/"), FOREIGN]

    assert _invoke(function, url, received, "Delete", "data", "stage-2/")["Status"] == "SUCCESS"
    assert _shape(_rules(client, "data")) == [FOREIGN]


def test_bucket_without_rules_is_left_without_rules(
    function: ModuleType, s3: S3Endpoint, responses: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = responses
    client = s3.client()
    client.create_bucket(Bucket="bare")
    assert _invoke(function, url, received, "Create", "bare")["Status"] == "SUCCESS"
    assert _shape(_rules(client, "bare")) == [_ours("staging/")]
    assert _invoke(function, url, received, "Delete", "bare")["Status"] == "SUCCESS"
    assert _rules(client, "bare") == []


def test_missing_bucket_fails_create_but_not_delete(
    function: ModuleType, responses: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = responses
    reply = _invoke(function, url, received, "Create", "no-such-bucket")
    assert reply["Status"] == "FAILED" and "NoSuchBucket" in reply["Reason"]
    # The rollback's Delete must succeed, or the stack is stuck in DELETE_FAILED.
    assert _invoke(function, url, received, "Delete", "no-such-bucket")["Status"] == "SUCCESS"
