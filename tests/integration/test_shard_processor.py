"""ShardProcessor in process, driven through amazon_kclpy's own message objects (Powertools
style): the KCL callbacks, the lease fence, and two live processors for one shard.

Real components: moto server (S3 for objects and snapshots; DynamoDB holding a lease table in
KCL's schema, standing in for the table the real daemon keeps: the daemon itself runs in
tests/e2e), PostgreSQL (Redshift stand-in, no primary keys on data tables), osmem-server
(OpenSearch stand-in). A TCP gate (tests/support/gate.py) holds one writer's traffic on the wire.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import psycopg2
import pytest
from amazon_kclpy import dispatch
from opensearchpy import NotFoundError, OpenSearch

from consumer.config import Settings, load_settings, with_overrides
from consumer.kcl.processor import ShardProcessor
from consumer.local.reconcile import ObjectCounter, redshift_counts, s3_result_rows
from consumer.sinks.migrate import migrate_all
from consumer.windows.model import result_id
from tests.support.checkpointer import RecordingCheckpointer
from tests.support.gate import Gate
from tests.support.servers import S3Endpoint, moto_s3, osmem, tcp_postgres

pytestmark = pytest.mark.integration
SHARD = "shardId-000000000000"
T0 = 1_795_000_000_000


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[S3Endpoint, str, str]]:
    with moto_s3() as s3, tcp_postgres() as dsn, osmem() as os_url:
        yield s3, dsn, os_url


def aws(endpoint: S3Endpoint, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint.url, region_name="us-east-1",
                        aws_access_key_id="t", aws_secret_access_key="t")


class Scene:
    """One stream's sinks and its KCL lease table, shared by the processors of a test."""

    def __init__(self, servers: tuple[S3Endpoint, str, str], name: str) -> None:
        self.s3_endpoint, self.dsn, self.os_url = servers
        self.name = name
        self.s3 = self.s3_endpoint.client()
        self.s3.create_bucket(Bucket=name)
        self.ddb = aws(self.s3_endpoint, "dynamodb")
        self.ddb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                              KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                              AttributeDefinitions=[{"AttributeName": "leaseKey",
                                                     "AttributeType": "S"}])
        self.counter = 0
        self.settings = self.settings_for("worker-a")
        migrate_all(self.settings)

    def settings_for(self, worker: str, dsn: str | None = None,
                     os_url: str | None = None) -> Settings:
        return with_overrides(
            load_settings(None, env={}),
            stream={"name": self.name, "app_name": self.name},
            s3={"bucket": self.name},
            kcl={"worker_id": worker},
            flush={"max_age_ms": 0},  # every processRecords commits
            windows={"size_ms": 10_000, "allowed_lateness_ms": 30_000,
                     "out_of_orderness_ms": 1_000, "idle_timeout_ms": 0},
            redshift={"enabled": True, "dsn": dsn or self.dsn, "dialect": "postgres",
                      "schema": self.name.replace("-", "_")},
            opensearch={"enabled": True, "endpoint": os_url or self.os_url, "auth": "none",
                        "index_prefix": self.name},
        )

    def lease_to(self, worker: str) -> None:
        """What KCL's take or steal does to the lease item."""
        self.counter += 1
        self.ddb.put_item(TableName=self.name, Item={
            "leaseKey": {"S": SHARD}, "leaseOwner": {"S": worker},
            "leaseCounter": {"N": str(self.counter)}, "checkpoint": {"S": "TRIM_HORIZON"}})

    def processor(self, worker: str, s3: Any = None, **clients: str) -> ShardProcessor:
        return ShardProcessor(self.settings_for(worker, **clients), s3 or self.s3, self.ddb,
                              time.time_ns())

    def state(self) -> dict[str, Any]:
        archive = ObjectCounter(self.s3, self.name, "raw/")
        quarantine = ObjectCounter(self.s3, self.name, "quarantine/")
        archive.refresh()
        quarantine.refresh()
        tables = redshift_counts(self.dsn, self.settings.redshift.schema)
        results = s3_result_rows(self.s3, self.name, "results/")
        client = OpenSearch(hosts=[self.os_url])
        try:
            client.indices.refresh(index=f"{self.name}-results")
            docs = client.search(index=f"{self.name}-results", size=10_000)["hits"]["hits"]
        except NotFoundError:  # no window result was emitted yet
            docs = []
        with psycopg2.connect(self.dsn) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT result_id, value_count, value_sum, is_final FROM"
                        f" {self.settings.redshift.schema}.window_results")
            rs_results = {rid: (n, total, final) for rid, n, total, final in cur.fetchall()}
        return {"archived": sorted(int(r["sequence"]) for r in archive.rows),
                "rs_results": rs_results,
                "late": sorted(int(r["sequence"]) for r in quarantine.rows),
                "archive_dups": archive.duplicates, "quarantine_dups": quarantine.duplicates,
                "raw": tables["raw_records"], "results": tables["window_results"],
                "s3_results": {r["result_id"]: r["count"] for r in results},
                "s3_rows": sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in results),
                "os_results": {d["_id"]: d["_source"]["count"] for d in docs}}


def message(action: str, **fields: Any) -> Any:
    """A message as amazon_kclpy decodes it from the daemon's JSON line."""
    return json.loads(json.dumps({"action": action, **fields}),
                      object_hook=dispatch.message_decode)


def records(seqs: range, straggler_of: int | None = None) -> list[dict[str, Any]]:
    """One record a second (10 per window), then optionally a straggler: one more record
    with the event time of record `straggler_of`, late but within the allowed lateness."""
    out = []
    times = [T0 + seq * 1_000 for seq in seqs]
    if straggler_of is not None:
        seqs = range(seqs.start, seqs.stop + 1)
        times.append(T0 + straggler_of * 1_000)
    for seq, t in zip(seqs, times, strict=True):
        data = orjson.dumps({"device_id": f"d{seq % 3}", "metric": "m", "value": seq, "ts": t})
        out.append({"action": "record", "data": base64.b64encode(data).decode(),
                    "partitionKey": f"d{seq % 3}",
                    "sequenceNumber": str(10**20 + seq), "subSequenceNumber": 0,
                    "approximateArrivalTimestamp": T0 + seq})
    return out


def feed(p: ShardProcessor, batch: list[dict[str, Any]], ckpt: RecordingCheckpointer) -> None:
    message("processRecords", records=batch, millisBehindLatest=0).dispatch(ckpt, p)


def start(p: ShardProcessor, checkpoint: str = "TRIM_HORIZON") -> None:
    message("initialize", shardId=SHARD, sequenceNumber=checkpoint,
            subSequenceNumber=0).dispatch(RecordingCheckpointer(), p)


def test_initialize_process_checkpoint_and_shutdown(servers: Any) -> None:
    sc = Scene(servers, "proc-basic")
    sc.lease_to("worker-a")
    p, ckpt = sc.processor("worker-a"), RecordingCheckpointer()
    start(p)
    feed(p, records(range(0, 20)), ckpt)
    feed(p, records(range(20, 40)), ckpt)
    assert [c.sequence - 10**20 for c in ckpt.positions if c] == [19, 39]
    message("shutdownRequested").dispatch(ckpt, p)
    state = sc.state()
    assert state["archived"] == [10**20 + i for i in range(40)]
    assert state["raw"].distinct == 40 and state["raw"].duplicates == 0


def test_a_processor_that_starts_after_the_lease_moved_never_writes(servers: Any) -> None:
    """The failing failover test's cause: a late processor must not lock out the owner."""
    sc = Scene(servers, "proc-late")
    sc.lease_to("worker-b")
    late, owner = sc.processor("worker-a"), sc.processor("worker-b")
    ckpt_owner, ckpt_late = RecordingCheckpointer(), RecordingCheckpointer()
    start(owner)
    start(late)  # finishes initialize after the real owner: it is fenced, not the owner
    assert late.fenced and not owner.fenced
    feed(late, records(range(0, 10)), ckpt_late)
    feed(owner, records(range(0, 10)), ckpt_owner)
    assert ckpt_late.positions == [] and len(ckpt_owner.positions) == 1
    assert sc.state()["raw"].distinct == 10


def test_lease_moves_mid_stream_and_the_old_owner_stops(servers: Any) -> None:
    sc = Scene(servers, "proc-moved")
    sc.lease_to("worker-a")
    a, ckpt = sc.processor("worker-a"), RecordingCheckpointer()
    start(a)
    feed(a, records(range(0, 10)), ckpt)
    sc.lease_to("worker-b")  # stolen; KCL on a has not said so yet
    feed(a, records(range(10, 20)), ckpt)
    assert a.fenced and [c.sequence - 10**20 for c in ckpt.positions if c] == [9]
    assert sc.state()["archived"] == [10**20 + i for i in range(10)]
    message("leaseLost").dispatch(ckpt, a)  # KCL catches up: nothing more happens


def test_checkpoint_throttling_is_retried_and_refusal_keeps_records(servers: Any) -> None:
    sc = Scene(servers, "proc-throttle")
    sc.lease_to("worker-a")
    a = sc.processor("worker-a")
    start(a)
    throttled = RecordingCheckpointer(["ThrottlingException", "ThrottlingException"])
    feed(a, records(range(0, 5)), throttled)
    assert throttled.last is not None and throttled.last.sequence == 10**20 + 4
    lost = RecordingCheckpointer(["ShutdownException"])
    feed(a, records(range(5, 10)), lost)
    assert lost.positions == [] and a.fenced  # the lease is gone: stop, never checkpoint


@pytest.mark.parametrize("held", ["s3", "results-s3", "redshift", "opensearch"])
def test_two_processors_one_shard_old_owner_released_after_new_owner_replays(
        servers: Any, held: str) -> None:
    """The old owner's write is held on the wire while the lease moves and the new owner
    replays from the checkpoint with other batch boundaries; then it is released. Every sink
    holds each record and each result once, with the same content as one owner would write."""
    sc = Scene(servers, f"proc-two-{held}")
    s3_endpoint, dsn, os_url = servers
    s3_port = int(s3_endpoint.url.rsplit(":", 1)[1])
    port = {"s3": s3_port, "results-s3": s3_port,
            "redshift": int(psycopg2.extensions.parse_dsn(dsn)["port"]),
            "opensearch": int(os_url.rsplit(":", 1)[1])}[held]
    # For S3, only the archive objects' PUTs wait, or only the results objects' (holding the
    # final results of the windows [0, 30 s), which the new owner finalizes in two steps),
    # while the manifest reservation before them goes.
    put = {"s3": f"PUT /{sc.name}/raw/".encode(), "results-s3": f"PUT /{sc.name}/results/".encode()}
    holds = ((lambda chunk: chunk.startswith(put[held])) if held in put else (lambda _: True))
    with Gate("127.0.0.1", port, holds) as gate:
        via = f"127.0.0.1:{gate.port}"
        old_clients: dict[str, Any] = {
            "s3": {"s3": S3Endpoint(f"http://{via}").client()},
            "results-s3": {"s3": S3Endpoint(f"http://{via}").client()},
            "redshift": {"dsn": dsn.replace(f"127.0.0.1:{port}", via)},
            "opensearch": {"os_url": f"http://{via}"}}[held]
        sc.lease_to("worker-a")
        old, ckpt_old = sc.processor("worker-a", **old_clients), RecordingCheckpointer()
        start(old)
        feed(old, records(range(0, 30)), ckpt_old)
        checkpoint = ckpt_old.last
        assert checkpoint is not None
        gate.close()
        blocked = threading.Thread(target=feed, args=(old, records(range(30, 66)), ckpt_old))
        blocked.start()
        assert gate.held.wait(30), "the old owner never reached the held sink"
        sc.lease_to("worker-b")  # the lease moves while the old owner's write waits
        new, ckpt_new = sc.processor("worker-b"), RecordingCheckpointer()
        start(new, str(checkpoint.sequence))
        feed(new, records(range(30, 50)), ckpt_new)  # other boundaries than the old owner's
        feed(new, records(range(50, 70)), ckpt_new)
        # A straggler updates a window the old owner's held write has an older version of.
        feed(new, records(range(70, 80), straggler_of=55), ckpt_new)
        gate.open()
        blocked.join(60)
        assert not blocked.is_alive()
    assert old.fenced and ckpt_old.positions == [checkpoint]
    state = sc.state()
    assert state["archived"] == [10**20 + i for i in range(81)]
    assert state["archive_dups"] == state["quarantine_dups"] == 0 and state["late"] == []
    assert state["raw"].distinct == 81 and state["raw"].duplicates == 0
    assert state["results"].duplicates == 0
    # The same results, by content, as one processor that owned the shard throughout.
    clean = Scene(servers, f"proc-clean-{held}")
    clean.lease_to("worker-a")
    only, ckpt = clean.processor("worker-a"), RecordingCheckpointer()
    start(only)
    for batch in (records(range(0, 30)), records(range(30, 50)), records(range(50, 70)),
                  records(range(70, 80), straggler_of=55)):
        feed(only, batch, ckpt)
    want = clean.state()
    # The straggler (record 80, device d2, event time of record 55) joined its window late:
    # d2's records 50, 53, 56, 59 and it.
    straggled = result_id("tumbling", T0 + 50_000, T0 + 60_000, ("d2", "m"), SHARD)
    assert want["os_results"][straggled] == 5
    assert state["rs_results"] == want["rs_results"] and want["rs_results"]
    assert state["os_results"] == want["os_results"] == {
        rid: n for rid, (n, _, _) in want["rs_results"].items()}
    assert state["s3_results"] == want["s3_results"]
    assert state["s3_rows"] == want["s3_rows"] and want["s3_rows"]  # none twice, none missing


def test_shard_end_closes_the_windows_and_checkpoints_shard_end(servers: Any) -> None:
    sc = Scene(servers, "proc-end")
    sc.lease_to("worker-a")
    p, ckpt = sc.processor("worker-a"), RecordingCheckpointer()
    start(p)
    feed(p, records(range(0, 25)), ckpt)
    message("shardEnded").dispatch(ckpt, p)
    assert ckpt.positions[-1] is None  # KCL's SHARD_END: no position
    state = sc.state()
    assert state["archived"] == [10**20 + i for i in range(25)]
    # Every window of the parent is final now, and holds its records once.
    assert sum(state["s3_results"].values()) == 25
    assert {rid: (n, True) for rid, n in state["s3_results"].items()} == {
        rid: (n, final) for rid, (n, _, final) in state["rs_results"].items()}
