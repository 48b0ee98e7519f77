"""Failure and ownership scenarios with the real KCL daemon: every sink reconciled by content,
0 lost, 0 duplicated (tests/e2e/scenario.py says exactly what is compared).

Real components: KCL 2.5.8 MultiLangDaemon and our processors, kinesis-mock (Kinesis; the
only emulator whose resharding is right), dynalite (leases), moto (S3), PostgreSQL (in
Redshift's place; tables without primary keys, so duplicates would show), osmem-server (in
OpenSearch's place), and a fault-injecting HTTP proxy (tests/support/faulty_proxy.py) for
OpenSearch throttling. One emulator stack is shared; each scenario has its own stream,
lease table (prepared, so KCL skips its random start-up wait), bucket, schema and index prefix.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from consumer.local.emulators import LocalStack, boto3_client
from consumer.local.producer import ProducerSpec, generate
from tests.e2e.scenario import (
    Scenario,
    leases,
    sample_sum,
    wait_active,
    wait_until,
)
from tests.support.faulty_proxy import FaultyProxy
from tests.support.steady_producer import Stragglers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with LocalStack(tmp_path_factory.mktemp("failures")) as s:
        yield s


SPEC = ProducerSpec(records=3000, kpl_fraction=0.5, poison_ratio=0.01, devices=50)


def test_kill_9_mid_stream_then_restart(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "kill-restart", tmp_path)
    try:
        first = sc.worker("a")
        sc.wait_leases(4)
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        sc.crash(first)
        sc.worker("b")
        producer.join()
        sc.reconcile()
    finally:
        sc.stop_all()


def test_two_workers_one_killed_fails_over(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "failover", tmp_path)
    try:
        a, b = sc.worker("a"), sc.worker("b")
        sc.wait_leases(4)
        # KCL balances leases by stealing every 2 x failover time.
        wait_until(lambda: min(leases(a), leases(b)) >= 1, 120,
                   "the two workers never shared the shards")
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        sc.crash(a)
        producer.join()
        sc.reconcile()
    finally:
        sc.stop_all()


def test_postgres_down_for_30_seconds(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "redshift-outage", tmp_path)
    try:
        worker = sc.worker("a")
        sc.wait_leases(4)
        producer = sc.produce(SPEC, rate=250)
        sc.wait_archived(600)
        stack.stop_postgres()
        time.sleep(30)
        stack.start_postgres()
        producer.join()
        sc.reconcile()
        retries = sample_sum(worker.metrics_url, "aetherstream_sink_retries_total",
                             sink="redshift-raw")
        assert retries > 0  # raw loads met the outage, waited it out, and lost nothing
    finally:
        sc.stop_all()


def test_opensearch_throttling_part_of_the_bulk_items(stack: LocalStack, tmp_path: Path) -> None:
    with FaultyProxy(stack.endpoints.opensearch_url, throttle_fraction=0.3, fail_fraction=0.1,
                     seed=5) as proxy:
        sc = Scenario(stack, "os-throttle", tmp_path, opensearch_url=proxy.url)
        try:
            sc.worker("a")
            sc.produce(SPEC).join()
            sc.reconcile()
        finally:
            sc.stop_all()
        assert proxy.stats.throttled_items > 0


def test_update_shard_count_mid_stream(stack: LocalStack, tmp_path: Path) -> None:
    sc = Scenario(stack, "reshard", tmp_path)
    try:
        sc.worker("a")
        sc.produce(ProducerSpec(records=1500, kpl_fraction=0.5, poison_ratio=0.01, seed=11)).join()
        sc.wait_archived(1000)
        kinesis = boto3_client("kinesis", stack.endpoints)
        kinesis.update_shard_count(StreamName=sc.name, TargetShardCount=8,
                                   ScalingType="UNIFORM_SCALING")
        wait_active(kinesis, sc.name)
        later = ProducerSpec(records=1500, kpl_fraction=0.5, poison_ratio=0.01, seed=12,
                             start_ms=SPEC.start_ms + 30_000)
        sc.produce(later).join()
        contents = sc.reconcile(timeout_s=300)
        assert len({r["shard"] for r in contents.archive.rows}) > 4  # children consumed too
        assert contents.results["s3"]
    finally:
        sc.stop_all()


# --- ownership scenarios (issue 9): records flow while leases move or shards merge -----------

RATE = 100  # user records/s: event time then moves at about wall-clock speed (10 ms each)


def steady_spec(seed: int) -> ProducerSpec:
    """More records than any scenario sends: the producer runs until the scenario stops it.

    No poison here: the burst-produced scenarios above cover it, and a lone poison record in
    its own batch has a test of its own (test_invalid_utf8_record_alone_in_its_batch)."""
    return ProducerSpec(records=100_000, kpl_fraction=0.5, poison_ratio=0.0, devices=50,
                        seed=seed)


def test_rolling_deployment_while_records_flow(stack: LocalStack, tmp_path: Path) -> None:
    """ECS-style: a runs; b and c join (KCL rebalances by stealing); a gets SIGTERM (graceful:
    flush, checkpoint); b is SIGKILLed with its processors; c ends with every shard. Records
    are produced at a steady rate through all of it."""
    sc = Scenario(stack, "rolling", tmp_path)
    a_id, b_id, c_id = (sc.worker_id(x) for x in "abc")
    try:
        a = sc.worker("a")
        sc.wait_leases(4)
        producer = sc.steady(generate(steady_spec(21)), RATE)
        sc.wait_archived(200)
        b, _ = sc.worker("b"), sc.worker("c")
        stolen = sc.wait_owners(lambda o: set(o.values()) == {a_id, b_id, c_id},
                                "b and c never stole leases from a")
        sent = [producer.sent_count]
        a.stop()  # SIGTERM to the daemon: shutdown_requested, flush, checkpoint
        moved = sc.wait_owners(lambda o: set(o.values()) == {b_id, c_id},
                               "a's leases were not taken by b and c")
        sent.append(producer.sent_count)
        b_shards = {s for s, owner in sc.lease_owners().items() if owner == b_id}
        killed_at = time.time()
        sc.crash(b)
        took = sc.wait_owners(lambda o: set(o.values()) == {c_id}, "c never took every shard")
        sent.append(producer.sent_count)
        sc.wait_archived(sc.archived() + 200)  # c processes what keeps coming
        sc.finish_producers()
        sent.append(len(sc.sent))
        assert sent == sorted(set(sent)), f"production paused: {sent}"
        sc.reconcile()
        first = sc.first_writes_after(killed_at, b_shards)
        assert set(first) == b_shards  # c wrote each of b's shards after b died
        print(f"rolling: steal {stolen:.1f} s, SIGTERM handover {moved:.1f} s, SIGKILL to "
              f"every lease at c {took:.1f} s (1 s polls), SIGKILL to c's first archive "
              f"write per shard { {k[-2:]: round(v, 1) for k, v in first.items()} } s, "
              f"records sent at each step {sent}")
    finally:
        sc.stop_all()


def test_merge_two_shards_while_records_flow(stack: LocalStack, tmp_path: Path) -> None:
    """Scale down: MergeShards of two adjacent shards while a producer keeps sending. The
    parents end (SHARD_END, their windows final), the child starts after both, and records
    sent before, during and after the transition are all there once."""
    sc = Scenario(stack, "merge", tmp_path)
    kinesis = boto3_client("kinesis", stack.endpoints)
    try:
        sc.worker("a")
        sc.wait_leases(4)
        producer = sc.steady(generate(steady_spec(31)), RATE)
        sc.wait_archived(300)
        low, high = sorted(kinesis.list_shards(StreamName=sc.name)["Shards"],
                           key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))[:2]
        at_merge = producer.sent_count
        kinesis.merge_shards(StreamName=sc.name, ShardToMerge=low["ShardId"],
                             AdjacentShardToMerge=high["ShardId"])
        wait_active(kinesis, sc.name)
        child = next(s["ShardId"] for s in kinesis.list_shards(StreamName=sc.name)["Shards"]
                     if s.get("AdjacentParentShardId"))
        wait_until(lambda: child in sc.archived_shards(), 120,
                   f"the merged shard {child} was never processed")
        at_child = producer.sent_count
        sc.wait_archived(sc.archived() + 200)
        sc.finish_producers()
        assert at_merge < at_child < len(sc.sent), "records must flow through the transition"
        contents = sc.reconcile(timeout_s=300)
        shards = {r["shard"] for r in contents.archive.rows}
        assert {low["ShardId"], high["ShardId"], child} <= shards
        lease = {o for s, o in sc.lease_owners().items() if s == child}
        assert lease == {sc.worker_id("a")}
    finally:
        sc.stop_all()


# A reading's own event time is up to 3 s (jitter) behind the head of its shard. Moved 20 s
# further back, its 10 s window ended at least 10 s before the head, past the watermark (head
# - 5 s out-of-orderness), so it was emitted; its end is within 23 s of the head, so end + 20 s
# lateness is still ahead of the watermark, and it is updated and emitted again. Moved 40 s
# back, end + 20 s is 10 s behind the head: late. (16 s lateness made two early stragglers,
# 20.4 s back, correctly late: the margin must cover the jitter.)
STRAGGLERS = Stragglers(near_ms=20_000, far_ms=40_000, near_every=20)
LATENESS_MS = 20_000


def test_allowed_lateness_with_stragglers_during_failover(stack: LocalStack,
                                                          tmp_path: Path) -> None:
    """allowed_lateness_ms > 0: stragglers within it update windows already emitted (the
    result is emitted again, same id, higher version), those beyond it are quarantined as
    late, while one of two workers is SIGKILLed. Every sink ends with the updated content."""
    sc = Scenario(stack, "lateness", tmp_path, windows={"allowed_lateness_ms": LATENESS_MS})
    a_id, b_id = sc.worker_id("a"), sc.worker_id("b")
    try:
        a, _ = sc.worker("a"), sc.worker("b")
        sc.wait_owners(lambda o: set(o.values()) == {a_id, b_id},
                       "the two workers never shared the shards")
        producer = sc.steady(STRAGGLERS.apply(generate(steady_spec(41))), RATE)
        sc.wait_archived(1500)  # past the first 20 s of event time: see in_stream below
        sc.crash(a)
        sc.wait_owners(lambda o: set(o.values()) == {b_id}, "b never took a's shards")
        assert producer.is_alive()
        sc.wait_archived(sc.archived() + 500)
        sc.finish_producers()
        contents = sc.reconcile(timeout_s=300)
    finally:
        sc.stop_all()
    seqs = {orjson.loads(r.data)["seq"] for r in sc.sent if r.poison is None}
    near = {s for s in seqs if STRAGGLERS.kind(s) == "near"}
    far = {s for s in seqs if STRAGGLERS.kind(s) == "far"}
    seq_of = contents.seq_of()
    late = {seq_of[i] for i in contents.late}
    unexpected = [(r["shard"], seq_of[(r["shard"], r["sequence"], r["sub_sequence"])],
                   r["quarantined_ms"], r["message"]) for r in contents.quarantine.rows
                  if r.get("stage") == "window"
                  and seq_of[(r["shard"], r["sequence"], r["sub_sequence"])] not in far]
    assert late == far, (unexpected[:10], sorted(far - late)[:10])
    updated = updates_of_emitted_windows(contents.archive.rows, near, late,
                                         sc.settings.windows.size_ms,
                                         sc.settings.windows.out_of_orderness_ms)
    # A near straggler of the first ~20 s lands before the stream's first window, where only
    # other stragglers are. Later ones find their key's window emitted already (5 readings
    # per key and window on average), so nearly all of those are updates.
    ts_of = {r["payload"]["seq"]: r["event_ts_ms"] for r in contents.archive.rows}
    in_stream = {s for s in near if ts_of[s] >= steady_spec(41).start_ms}
    assert len(in_stream) >= 10, len(in_stream)
    assert len(updated & in_stream) >= 0.8 * len(in_stream), (len(updated), len(in_stream))


def updates_of_emitted_windows(rows: list[dict], near: set[int], late: set[int], size_ms: int,
                               out_of_orderness_ms: int) -> set[int]:
    """The near stragglers whose (shard, window, key) already held records and had ended
    before the straggler's watermark (max event time before it in shard order - out of
    orderness: a lower bound of the engine's, which idle ticks only raise)."""
    head: dict[str, int] = {}
    seen: set[tuple[str, int, str, str]] = set()
    updated: set[int] = set()
    for row in sorted(rows, key=lambda r: (r["shard"], int(r["sequence"]),
                                            int(r["sub_sequence"]))):
        p, shard, ts = row["payload"], row["shard"], row["event_ts_ms"]
        if p["seq"] in late:
            continue
        window = (shard, ts // size_ms * size_ms, p["device_id"], p["metric"])
        watermark = head.get(shard, -(2**62)) - out_of_orderness_ms
        if p["seq"] in near and window in seen and window[1] + size_ms <= watermark:
            updated.add(p["seq"])
        seen.add(window)
        head[shard] = max(head.get(shard, ts), ts)
    return updated


def test_invalid_utf8_record_alone_in_its_batch(stack: LocalStack, tmp_path: Path) -> None:
    """An invalid-UTF-8 record that KCL delivers alone (its shard idle before and after) is
    quarantined like any other, and the worker keeps running."""
    from consumer.aws import put_records
    from consumer.local.producer import UserRecord, poison, to_kinesis_entries

    sc = Scenario(stack, "utf8-alone", tmp_path)
    kinesis = boto3_client("kinesis", stack.endpoints)
    try:
        worker = sc.worker("a")
        sc.wait_leases(4)
        before = list(generate(ProducerSpec(records=300, devices=50, seed=51)))
        put_records(kinesis, sc.name, to_kinesis_entries(before, 25))
        sc.wait_archived(len(before))  # every shard caught up and idle
        key, data, kind = poison(random.Random(0), 1)
        assert kind == "invalid_utf8"
        alone = UserRecord(key, data, kind, aggregate=False)
        put_records(kinesis, sc.name, to_kinesis_entries([alone], 25))
        time.sleep(5)  # several polls of its shard return it, and only it
        assert worker.daemon is not None and worker.daemon.alive(), \
            "the KCL daemon exited after the invalid-UTF-8 record"
        after = list(generate(ProducerSpec(records=300, devices=50, seed=52,
                                           start_ms=SPEC.start_ms + 10_000)))
        # Distinct seqs from `before` (the reconciliation keys readings by seq).
        after = [UserRecord(r.partition_key, r.data.replace(b'"seq":', b'"seq":1000'),
                            r.poison, r.aggregate) for r in after]
        put_records(kinesis, sc.name, to_kinesis_entries(after, 25))
        sc.sent = [*before, alone, *after]
        sc.reconcile(timeout_s=120)
    finally:
        sc.stop_all()
