"""ShardProcessor in process, with its PostgreSQL traffic held on the wire: while the flush
blocks, the lag gauge rises from KCL's last millisBehindLatest and the heartbeat stands still.

Real components as in test_shard_processor.py (moto server for S3 and the lease table,
PostgreSQL as the Redshift stand-in, osmem-server as the OpenSearch stand-in); a TCP gate
(tests/support/gate.py) stands in for a cluster that stops answering, shorter than the load
deadline so the write is held, not cut.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

from consumer.kcl.processor import ShardProcessor
from consumer.metrics.registry import REGISTRY
from tests.integration.test_shard_processor import SHARD, Scene, message, records, start
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.gate import Gate
from tests.support.servers import S3Endpoint, moto_s3, osmem, tcp_postgres

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[S3Endpoint, str, str]]:
    with moto_s3() as s3, tcp_postgres() as dsn, osmem() as os_url:
        yield s3, dsn, os_url


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name, {"shard": SHARD})
    assert value is not None, name
    return value


def lag() -> float:
    return sample("aetherstream_millis_behind_latest")


def heartbeat() -> float:
    return sample("aetherstream_processor_heartbeat_timestamp_seconds")


def feed(p: ShardProcessor, batch: list[dict[str, Any]], behind_ms: int,
         ckpt: RecordingCheckpointer) -> None:
    message("processRecords", records=batch, millisBehindLatest=behind_ms).dispatch(ckpt, p)


def test_lag_rises_and_heartbeat_stands_still_while_a_flush_blocks(servers: Any) -> None:
    sc = Scene(servers, "proc-lag")
    _, dsn, _ = servers
    pg_port = int(psycopg2.extensions.parse_dsn(dsn)["port"])
    with Gate("127.0.0.1", pg_port) as gate:
        sc.lease_to("worker-a")
        p = sc.processor("worker-a", dsn=dsn.replace(f"127.0.0.1:{pg_port}",
                                                     f"127.0.0.1:{gate.port}"))
        ckpt = RecordingCheckpointer()
        start(p)
        feed(p, records(range(0, 10)), 0, ckpt)
        assert lag() == 0
        gate.close()
        blocked = threading.Thread(target=feed, args=(p, records(range(10, 20)), 5000, ckpt))
        blocked.start()
        assert gate.held.wait(30), "the flush never reached PostgreSQL"
        beat = heartbeat()
        seen = []
        for _ in range(6):
            time.sleep(0.5)
            seen.append(lag())
        assert blocked.is_alive()  # still blocked on the held write
        assert heartbeat() == beat  # a stalled processor looks stalled
        gate.open()
        blocked.join(30)
        assert not blocked.is_alive()
    assert seen == sorted(seen) and seen[0] >= 5000
    assert seen[-1] >= 5000 + 2000  # 3 s held; the gauge moves once a second
    assert heartbeat() > beat  # the batch finished
    assert [c.sequence - 10**20 for c in ckpt.positions if c] == [9, 19]
    feed(p, records(range(20, 25)), 40, ckpt)
    assert lag() == 40  # KCL's value again once a batch arrives
    message("shutdownRequested").dispatch(ckpt, p)
