"""A hung cluster with the real KCL daemon: PostgreSQL (in Redshift's place) is stopped with
SIGSTOP for 60 s while records flow. A stopped server answers nothing, yet its kernel keeps
the connections up and acknowledges keepalives, so only the client-side load deadline ends a
blocked load. Each flush times out, reconnects, retries and resumes after SIGCONT; every sink
reconciles (0 lost, 0 duplicated); and the lag gauge on /metrics rises during the stop.

Real components as in test_failures.py (whose Scenario this reuses); every PostgreSQL
process (the postmaster first, so it forks no more, then its backends and helpers, each of
which PostgreSQL puts in its own process group) is stopped, as on a frozen host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest

from consumer.kcl.supervisor import Supervisor
from consumer.local.emulators import LocalStack
from consumer.local.producer import ProducerSpec
from tests.e2e.test_failures import Scenario, sample_sum, wait_until

pytestmark = pytest.mark.e2e
STOP_S = 60


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("hung")) as s:
        yield s


def postmaster(stack: LocalStack) -> psutil.Process:
    """From the first line of postmaster.pid."""
    pid_file = stack.run_dir / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        pytest.skip("PostgreSQL is external (AETHERSTREAM_POSTGRES_DSN): cannot stop it")
    return psutil.Process(int(pid_file.read_text().split()[0]))


def signal_all(server: psutil.Process, sig: signal.Signals) -> int:
    """The postmaster, then every process it has forked; returns how many were signalled.
    A backend may exit between the listing and its signal (a session ending)."""
    os.kill(server.pid, sig)
    signalled = 1
    for child in server.children(recursive=True):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)
            signalled += 1
    return signalled


def max_lag_ms(worker: Supervisor) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(worker.metrics_url, timeout=10).read().decode()
    return max((s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == "aetherstream_millis_behind_latest"), default=0.0)


def trickle(sc: Scenario, batches: int = 16, every_s: float = 5.0) -> None:
    """200 records every 5 s for 80 s, so records keep arriving through the whole stop (the
    producer paces per 2,000 records, too coarse for this)."""
    for i in range(batches):
        started = time.monotonic()
        # Event time moves as fast as the wall clock (200 readings 25 ms apart per 5 s), so
        # idle ticks between batches do not make the next batch late.
        sc.produce(ProducerSpec(records=200, kpl_fraction=0.5, poison_ratio=0.01, devices=50,
                                interval_ms=int(every_s * 1000) // 200,
                                start_ms=ProducerSpec.start_ms + int(every_s * 1000) * i,
                                seed=100 + i)).join()
        time.sleep(max(0.0, every_s - (time.monotonic() - started)))


def loaded_shards(sc: Scenario) -> dict[str, int]:
    """How many shards have rows in each Redshift table."""
    schema = sc.settings.redshift.schema
    with psycopg2.connect(sc.settings.redshift.connect_dsn(), connect_timeout=5) as conn, \
            conn.cursor() as cur:
        cur.execute(f"SELECT (SELECT count(DISTINCT shard) FROM {schema}.raw_records),"
                    f" (SELECT count(DISTINCT shard_id) FROM {schema}.window_results)")
        raw, results = cur.fetchone()
    conn.close()
    return {"raw_records": raw, "window_results": results}


def test_postgres_stopped_for_60_seconds(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "hung-postgres", tmp_path)
    server = postmaster(stack)
    try:
        worker = sc.worker("a")
        sc.wait_leases(4)
        producer = threading.Thread(target=trickle, args=(sc,))
        producer.start()
        # Every shard has loaded both tables, so each holds open connections: a load after
        # the stop meets a server that accepted it and never answers (not a connect timeout).
        wait_until(lambda: loaded_shards(sc) == {"raw_records": 4, "window_results": 4}, 120,
                   "not every shard loaded both Redshift tables")
        before = max_lag_ms(worker)
        stopped = signal_all(server, signal.SIGSTOP)
        lags = []
        try:
            stopped_at = time.monotonic()
            while (left := STOP_S - (time.monotonic() - stopped_at)) > 0:
                time.sleep(min(10.0, left))
                lags.append(max_lag_ms(worker))
        finally:
            signal_all(server, signal.SIGCONT)
        producer.join()
        state = sc.reconcile()
        retries = {sink: sample_sum(worker.metrics_url, "aetherstream_sink_retries_total",
                                    sink=sink) for sink in ("redshift-raw", "redshift-results")}
    finally:
        sc.stop_all()
    assert stopped > 2  # the postmaster and at least our backends
    log = (tmp_path / "a" / "kcl-daemon.log").read_text()
    cut = [line for line in log.splitlines() if "reconnecting before the retry" in line
           and "DeadlineExceeded" in line]
    print(f"{len(cut)} loads cut by the deadline")
    assert cut  # blocked loads were cut by the client deadline, not left to hang
    print(f"lag before {before:.0f} ms, during the stop {[round(v) for v in lags]} ms; "
          f"retries {retries}; reconciled {state}")
    # Without the deadline, a blocked load would simply finish after SIGCONT: no retry.
    # Which Redshift sink a shard was loading when the server stopped is chance.
    assert sum(retries.values()) > 0
    # The gauge climbed with the stop (KCL itself reports nothing while processRecords blocks).
    assert lags[0] < lags[-1] and lags[-1] >= before + 0.6 * STOP_S * 1000
