"""opensearch_client: SigV4 signing, the open mode, and the request timeout.

Stand-in: tests/support/sigv4_stub.py, a stdlib HTTP server that answers 403 (as an
IAM-protected OpenSearch domain does) unless the request carries a valid SigV4 signature,
which it recomputes independently from the request as received. No real AWS endpoint is
reachable here, and osmem-server does not check signatures. Credentials are fixed dummies
from the environment, or from a credential_process that rotates keys, so that botocore's
default chain and its refreshable credentials are what the client really uses.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from opensearchpy import exceptions as os_exc

from consumer.sinks.clients import opensearch_client
from consumer.sinks.errors import ErrorKind, classify, is_retryable
from tests.support.sigv4_stub import sigv4_stub
from tests.support.stub_servers import silent_server

KEY, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1"


@pytest.fixture(autouse=True)
def _isolated_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _env_credentials(monkeypatch: pytest.MonkeyPatch, secret: str = SECRET) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)


@pytest.mark.parametrize(("service", "region"), [("es", "eu-west-1"), ("aoss", "us-east-2")])
def test_signed_requests_pass_with_the_service_in_the_scope(
    monkeypatch: pytest.MonkeyPatch, service: str, region: str
) -> None:
    _env_credentials(monkeypatch)
    with sigv4_stub({KEY: SECRET}, {KEY: TOKEN}) as stub:
        client = opensearch_client(stub.url, auth="sigv4", service=service,  # type: ignore[arg-type]
                                   region=region, timeout_s=5)
        assert client.info()["cluster_name"] == "stub"
        doc = client.index(index="events", id="d-1", body={"device_id": "d", "value": 1.5})
        assert doc["_id"] == "d-1"
    assert len(stub.seen) == 2
    for request, verdict in stub.seen:
        assert verdict.ok, verdict.reason
        assert verdict.access_key == KEY
        assert verdict.scope is not None
        assert verdict.scope.endswith(f"/{region}/{service}/aws4_request")
        assert f"/{region}/{service}/aws4_request" in request.headers["authorization"]
        assert {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token"} <= set(
            verdict.signed_headers)
    assert stub.seen[1][0].body  # the body was signed (payload hash checked by the stub)


def test_unsigned_request_gets_403_and_is_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    _env_credentials(monkeypatch)
    with sigv4_stub({KEY: SECRET}) as stub:
        client = opensearch_client(stub.url, auth="none", service="es", region="eu-west-1",
                                   timeout_s=5)
        with pytest.raises(os_exc.AuthorizationException) as info:
            client.info()
    assert info.value.status_code == 403
    assert classify(info.value) is ErrorKind.AUTH
    assert not is_retryable(info.value)
    assert [v.reason for _, v in stub.seen] == ["no Authorization header"]


def test_wrong_secret_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stub really checks the signature: the right key id with a wrong secret fails."""
    _env_credentials(monkeypatch, secret="not-the-secret")
    with sigv4_stub({KEY: SECRET}) as stub:
        client = opensearch_client(stub.url, auth="sigv4", service="es", region="eu-west-1",
                                   timeout_s=5)
        with pytest.raises(os_exc.AuthorizationException):
            client.info()
    assert [v.reason for _, v in stub.seen] == ["signature does not match"]


ROTATING_PROCESS = """
import datetime, json, pathlib, sys
counter = pathlib.Path(sys.argv[1])
n = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(n))
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
print(json.dumps({"Version": 1, "AccessKeyId": f"AKIDROTATING{n}",
                  "SecretAccessKey": f"secret-{n}", "Expiration": expires.isoformat()}))
"""


def test_refreshable_credentials_are_refreshed_per_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A credential_process whose keys expire within botocore's mandatory-refresh window
    (10 min): every signature must fetch fresh keys, proving the client keeps botocore's
    refreshable credentials rather than a snapshot taken at construction."""
    script = tmp_path / "rotate.py"
    script.write_text(ROTATING_PROCESS)
    config = tmp_path / "config"
    config.write_text(
        f"[default]\ncredential_process = {sys.executable} {script} {tmp_path / 'n'}\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    secrets = {f"AKIDROTATING{n}": f"secret-{n}" for n in range(1, 10)}
    with sigv4_stub(secrets) as stub:
        client = opensearch_client(stub.url, auth="sigv4", service="es", region="eu-west-1",
                                   timeout_s=5)
        client.info()
        client.info()
    assert all(v.ok for _, v in stub.seen), [v.reason for _, v in stub.seen]
    keys = [v.access_key for _, v in stub.seen]
    assert len(keys) == 2
    assert keys[0] != keys[1]


def test_sigv4_without_credentials_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="found no credentials"):
        opensearch_client("http://127.0.0.1:9", auth="sigv4", service="es", region="eu-west-1",
                          timeout_s=5)


def test_timeout_bounds_a_request_and_the_client_does_not_retry() -> None:
    with silent_server() as silent:
        client = opensearch_client(f"http://127.0.0.1:{silent.port}", auth="none",
                                   service="es", region="eu-west-1", timeout_s=0.5)
        start = time.monotonic()
        with pytest.raises(os_exc.ConnectionTimeout) as info:
            client.info()
        elapsed = time.monotonic() - start
        assert silent.accepted == 1  # retry_on_timeout off: our Retrier owns retries
    assert 0.4 <= elapsed < 2.0
    assert is_retryable(info.value)
