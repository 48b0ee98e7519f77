"""The metrics server over real HTTP, merging two real shard processes; scrape auth."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.metrics.health import HealthChecks
from consumer.metrics.registry import ENV_VAR, SAMPLE_NAMES
from consumer.metrics.server import MetricsServer, ScrapeAuth

pytestmark = pytest.mark.integration

# A stand-in shard processor: records metrics, holds its lease until stdin closes.
CHILD = textwrap.dedent(
    """
    import sys
    from consumer.metrics import registry as r
    r.assert_multiprocess_mode()
    m = r.ShardMetrics(sys.argv[1])
    m.batch_received([1, 2, 2], [100, 50, 50])
    m.lease_acquired()
    r.PROCESS_RECORDS_DURATION_SECONDS.labels(sys.argv[1]).observe(0.03)
    r.SINK_BUFFER_BYTES.labels("s3", sys.argv[1]).set(123)
    sys.stderr.write("ready\\n"); sys.stderr.flush()
    sys.stdin.read()
    m.lease_released()
    """
)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def _get(url: str) -> tuple[int, bytes]:
    return _request(url)[:2]


def _request(url: str, authorization: str = "") -> tuple[int, bytes, list[str]]:
    """GET; returns status, body and the WWW-Authenticate header values."""
    headers = {"Authorization": authorization} if authorization else {}
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get_all("WWW-Authenticate") or []
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get_all("WWW-Authenticate") or []


def _start_child(directory: Path, shard: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **{ENV_VAR: str(directory)})
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, shard],
        env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    assert proc.stderr.readline() == b"ready\n"
    return proc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[MetricsServer, dict[str, bool], Clock]]:
    daemon = {"alive": True}
    clock = Clock()
    health = HealthChecks(lambda: daemon["alive"], max_heartbeat_age_s=30, clock=clock)
    server = MetricsServer("127.0.0.1", 0, tmp_path, health).start()
    try:
        yield server, daemon, clock
    finally:
        server.stop()


def _readyz(server: MetricsServer) -> tuple[int, list[str]]:
    status, body = _get(server.url + "/readyz")
    return status, json.loads(body)["failed"]


def test_scrape_merges_two_processes_and_readyz_transitions(
    served: tuple[MetricsServer, dict[str, bool], Clock], tmp_path: Path
) -> None:
    server, daemon, clock = served
    assert _readyz(server) == (503, ["leases", "heartbeat"])
    children = [_start_child(tmp_path, "shardId-0"), _start_child(tmp_path, "shardId-1")]
    try:
        status, body = _get(server.url + "/metrics")
        assert status == 200
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples
        }
        assert {name for name, _ in samples} <= SAMPLE_NAMES
        assert samples[("aetherstream_leases_held", ())] == 2
        shard0 = (("shard", "shardId-0"),)
        assert samples[("aetherstream_kinesis_records_received_total", shard0)] == 2
        assert samples[("aetherstream_user_records_received_total", shard0)] == 3
        assert samples[("aetherstream_received_bytes_total", shard0)] == 200
        assert samples[("aetherstream_process_records_duration_seconds_count", shard0)] == 1

        assert _readyz(server) == (200, [])
        daemon["alive"] = False
        assert _readyz(server) == (503, ["daemon"])
        daemon["alive"] = True
        clock.offset = 31.0  # heartbeats are now older than the 30 s limit
        assert _readyz(server) == (503, ["heartbeat"])
        clock.offset = 0.0
        assert _readyz(server) == (200, [])
    finally:
        children[0].communicate(timeout=10)  # graceful: releases its lease itself
        children[1].kill()  # crash: its lease gauge stays in its file until reaped
        children[1].communicate(timeout=10)
    # Exited processes are reaped on the next scrape: no lease, no heartbeat.
    assert _readyz(server) == (503, ["leases", "heartbeat"])


def test_healthz_follows_the_supervisor_loop(
    served: tuple[MetricsServer, dict[str, bool], Clock],
) -> None:
    server, _, clock = served
    assert _get(server.url + "/healthz")[0] == 200
    clock.offset = server.health.max_loop_age_s + 1
    assert _get(server.url + "/healthz")[0] == 503
    server.health.tick()
    assert _get(server.url + "/healthz")[0] == 200
    server.health.stopped()
    status, body = _get(server.url + "/healthz")
    assert status == 503 and json.loads(body)["failed"] == ["loop"]
    assert _get(server.url + "/nope")[0] == 404


# --- scrape auth -------------------------------------------------------------------------------
def _basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


@pytest.fixture
def auth_server(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[MetricsServer]:
    health = HealthChecks(lambda: True, max_heartbeat_age_s=30)
    server = MetricsServer("127.0.0.1", 0, tmp_path, health, auth=request.param).start()
    try:
        yield server
    finally:
        server.stop()


TOKEN = "s3cr3t-token-of-some-length"
BASIC = "prometheus:pa:ss wörd"  # a colon and non-ASCII in the password


@pytest.mark.parametrize("auth_server", [ScrapeAuth(bearer_token=TOKEN)], indirect=True)
def test_bearer_token_guards_metrics_only(auth_server: MetricsServer, tmp_path: Path) -> None:
    url = auth_server.url
    child = _start_child(tmp_path, "shardId-0")  # so that there are metrics to withhold
    try:
        for authorization in ("", "Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN,
                              _basic(f"x:{TOKEN}")):
            status, body, challenge = _request(url + "/metrics", authorization)
            assert (status, challenge) == (401, ['Bearer realm="metrics"']), authorization
            assert b"aetherstream" not in body
        for authorization in (f"Bearer {TOKEN}", f"bearer  {TOKEN}"):
            status, body, challenge = _request(url + "/metrics", authorization)
            assert (status, challenge) == (200, []), authorization
            leases = [s.value for f in text_string_to_metric_families(body.decode())
                      for s in f.samples if s.name == "aetherstream_leases_held"]
            assert leases == [1]
        # The probes need no credentials: ECS and load balancer health checks send none.
        assert _request(url + "/healthz")[0] == 200
        status, body, _ = _request(url + "/readyz")
        assert status == 200 and json.loads(body)["failed"] == []  # the verdict, no 401
        assert _request(url + "/nope")[0] == 404
    finally:
        child.communicate(timeout=10)


@pytest.mark.parametrize("auth_server", [ScrapeAuth(basic_auth=BASIC)], indirect=True)
def test_basic_auth_guards_metrics(auth_server: MetricsServer) -> None:
    url = auth_server.url + "/metrics"
    assert _request(url, _basic(BASIC))[0] == 200
    for authorization in ("", _basic("prometheus:pa:ss"), _basic("Prometheus:pa:ss wörd"),
                          "Basic !!not-base64!!", f"Bearer {BASIC}", "Basic"):
        status, _, challenge = _request(url, authorization)
        assert (status, challenge) == (401, ['Basic realm="metrics", charset="UTF-8"'])


@pytest.mark.parametrize(
    "auth_server", [ScrapeAuth(bearer_token=TOKEN, basic_auth=BASIC)], indirect=True
)
def test_either_credential_when_both_are_set(auth_server: MetricsServer) -> None:
    url = auth_server.url + "/metrics"
    assert _request(url, f"Bearer {TOKEN}")[0] == 200
    assert _request(url, _basic(BASIC))[0] == 200
    status, _, challenges = _request(url, _basic(TOKEN))
    assert status == 401 and len(challenges) == 2


@pytest.mark.parametrize("auth_server", [None], indirect=True)
def test_metrics_open_without_configured_credentials(auth_server: MetricsServer) -> None:
    assert _request(auth_server.url + "/metrics")[0] == 200
    assert _request(auth_server.url + "/metrics", "Bearer anything")[0] == 200


def test_basic_auth_setting_without_a_colon_is_refused() -> None:
    with pytest.raises(ValueError, match=r"metrics\.basic_auth"):
        ScrapeAuth(basic_auth="just-a-user")
