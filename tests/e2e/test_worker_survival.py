"""One shard's record processor dies; the worker and the other shards carry on.

Real components: KCL 2.5.8 MultiLangDaemon, our shard host and processors, and the local
stack (kinesis-mock, dynalite, moto, PostgreSQL, osmem-server), as in test_failures.py.
The AccessDenied comes from an HTTP proxy in front of moto that answers one shard's S3
writes with S3's own AccessDenied error (tests/support/s3_deny_proxy.py): moto evaluates no
bucket policies, so the proxy stands in for a Deny on that shard's prefix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from consumer.config import to_env, with_overrides
from consumer.kcl.supervisor import Supervisor
from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.stack import aws_env
from tests.e2e.test_failures import SPEC, Scenario, sample_sum, wait_until
from tests.support.s3_deny_proxy import S3DenyProxy

pytestmark = pytest.mark.e2e
DENIED_SHARD = "shardId-000000000001"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("survival")) as s:
        yield s


def worker(sc: Scenario, label: str, s3_endpoint: str | None = None) -> Supervisor:
    settings = with_overrides(sc.settings, kcl={"worker_id": f"{sc.name}-{label}"})
    env = {**aws_env(sc.stack.endpoints), **to_env(settings)}
    if s3_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = s3_endpoint
    w = Supervisor(settings, sc.run_dir / label, env)
    w.start()
    sc.workers.append(w)
    return w


def processors(w: Supervisor) -> set[int]:
    """The pids of the worker's record processors (the shard hosts' children)."""
    assert w.daemon is not None and w.daemon.pid is not None
    return {p.pid for p in psutil.Process(w.daemon.pid).children(recursive=True)
            if "consumer.kcl.worker" in " ".join(p.cmdline())}


def failures(w: Supervisor) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(w.metrics_url, timeout=10).read().decode()
    return {(s.labels["shard"], s.labels["reason"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "aetherstream_processor_failures_total"}


def readyz(w: Supervisor) -> dict[str, object]:
    try:
        body = urllib.request.urlopen(w.metrics_url.replace("/metrics", "/readyz"),
                                      timeout=10).read()
    except urllib.error.HTTPError as exc:  # 503 when a check fails
        body = exc.read()
    out: dict[str, object] = json.loads(body)
    return out


def per_shard(sc: Scenario) -> Counter[str]:
    """Distinct records in the archive and the quarantine, by shard."""
    archive, quarantine = sc.counters()
    return Counter(shard for shard, _, _ in {*archive.identities, *quarantine.identities})


def initialized_at(run_dir: Path, shard: str) -> list[str]:
    """The start position of each processor of the shard, from its 'initialized' log line."""
    starts = []
    for line in (run_dir / "kcl-daemon.log").read_text(errors="replace").splitlines():
        if '"initialized"' in line and shard in line:
            match = re.search(r'\\?"start\\?": ?\\?"([^"\\]+)', line)
            starts.append(match.group(1) if match else "?")
    return starts


def lease_checkpoint(sc: Scenario, shard: str) -> str:
    """The shard's checkpoint in KCL's lease table, as our Position prints it."""
    item = boto3_client("dynamodb", sc.stack.endpoints).get_item(
        TableName=sc.name, Key={"leaseKey": {"S": shard}}, ConsistentRead=True)["Item"]
    return f"{item['checkpoint']['S']}/{item.get('checkpointSubSequenceNumber', {}).get('N', 0)}"


def test_a_killed_processor_stops_only_its_shard(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "kill-one", tmp_path)
    try:
        w = worker(sc, "a")
        sc.wait_leases(4)
        assert w.daemon is not None
        java = w.daemon.pid
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        wait_until(lambda: all(lease_checkpoint(sc, f"shardId-00000000000{i}")[0].isdigit()
                               for i in range(4)), 60, "a shard never checkpointed")
        before = processors(w)
        assert len(before) == 4
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: sum(failures(w).values()) >= 1, 30, "no failure was recorded")
        [(shard, reason)] = failures(w)
        assert reason == "signal:SIGKILL"
        checkpoint = lease_checkpoint(sc, shard)  # the host never checkpoints for the dead
        body = readyz(w)
        assert "processors" in body["failed"], body  # type: ignore[operator]
        producer.join()
        sc.reconcile()  # 0 lost, 0 duplicated, in every sink
        assert w.daemon.alive() and w.daemon.pid == java  # the worker never went down
        after = processors(w)
        assert before - {victim} <= after and len(after) == 4  # the others never restarted
        starts = initialized_at(w.run_dir, shard)
        assert len(starts) == 2 and starts[1] == checkpoint, (starts, checkpoint)
        assert failures(w) == {(shard, "signal:SIGKILL"): 1.0}
    finally:
        sc.stop_all()


def test_access_denied_on_one_shard_spares_the_other_three(
        stack: LocalStack, tmp_path: Path) -> None:
    with S3DenyProxy(stack.endpoints.s3_endpoint, deny=DENIED_SHARD) as proxy:
        sc = Scenario(stack, "deny-one", tmp_path)
        try:
            w = worker(sc, "a", s3_endpoint=proxy.url)
            sc.wait_leases(4)
            assert w.daemon is not None
            java = w.daemon.pid
            sc.produce(SPEC).join()
            # The denied shard loops (visibly), backed off; the others deliver everything.
            wait_until(lambda: failures(w).get((DENIED_SHARD, "auth:AccessDenied"), 0) >= 2,
                       120, "the denied shard did not fail repeatedly")
            body = readyz(w)
            detail = body["checks"]["processors"]["detail"]  # type: ignore[index]
            assert "processors" in body["failed"], body  # type: ignore[operator]
            assert DENIED_SHARD in detail and "auth:AccessDenied" in detail, detail
            during = stable_counts(sc)
            assert during[DENIED_SHARD] == 0 and proxy.denied > 0
            assert set(failures(w)) == {(DENIED_SHARD, "auth:AccessDenied")}
            assert w.daemon.alive() and w.daemon.pid == java
            proxy.deny = None  # the policy is fixed
            sc.reconcile()
            final = per_shard(sc)
            others = {s for s in final if s != DENIED_SHARD}
            assert len(others) == 3 and final[DENIED_SHARD] > 0
            # everything of the other three was delivered while the fourth was failing
            assert {s: during[s] for s in others} == {s: final[s] for s in others}
            assert w.daemon.alive() and w.daemon.pid == java
            assert sample_sum(w.metrics_url, "aetherstream_leases_held") == 4
        finally:
            sc.stop_all()


def stable_counts(sc: Scenario, quiet_s: float = 8, timeout_s: float = 120) -> Counter[str]:
    """Per-shard counts once they have not changed for quiet_s."""
    deadline = time.monotonic() + timeout_s
    last, since = per_shard(sc), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the archive never settled"
        time.sleep(2)
        now = per_shard(sc)
        if now != last:
            last, since = now, time.monotonic()
    return last
