"""Redshift sink against real servers.

Stand-ins: PostgreSQL 16 (pgserver) for Redshift, because no Redshift emulator speaks the
wire protocol and PostgreSQL runs the same staging-table + MERGE / DELETE USING subset (the
tables have no primary keys, as on Redshift, so duplicates would show). moto's S3 server
holds the staged CSV objects, because moto honours real S3 semantics; the PostgreSQL dialect
reads the same staged bytes back and COPYs them FROM STDIN, where Redshift would COPY from S3.
One server of each per module.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.metrics.registry import REGISTRY
from consumer.records.model import Event, Position, RawRecord
from consumer.sinks.base import RawRow, ResultRow, Sink, WriteOutcome
from consumer.sinks.clients import DeadlineExceeded, redshift_connect
from consumer.sinks.errors import is_retryable
from consumer.sinks.fence import Fenced, FenceToken
from consumer.sinks.opensearch import key_text
from consumer.sinks.redshift import (
    RAW_BINDING,
    RAW_TABLE,
    RESULTS_BINDING,
    RESULTS_TABLE,
    STAGING_SINK,
    PostgresDialect,
    RedshiftDialect,
    RedshiftLoader,
    S3StagingStore,
    ShardWriter,
    TableSpec,
    delete_insert_sql,
    fit_varchar,
    ident,
    load_deadline_s,
    merge_sql,
    migrate,
    raw_records_sink,
    redshift_merge_problems,
    retryable,
    window_results_sink,
)
from consumer.sinks.retry import Backoff, Retrier, RetryEvent, StopRetrying
from consumer.sinks.rows import result_row, result_version
from consumer.windows.engine import WindowEngine
from consumer.windows.model import WindowSpec
from tests.support.servers import S3Endpoint, moto_s3, postgres

pytestmark = pytest.mark.integration
BUCKET = "aether-staging"


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with postgres() as url:
        yield url


@pytest.fixture(scope="module")
def staging() -> Iterator[S3StagingStore]:
    with moto_s3() as endpoint:
        client = endpoint.client()
        client.create_bucket(Bucket=BUCKET)
        yield S3StagingStore(client, BUCKET)


@pytest.fixture()
def conn(dsn: str) -> Iterator[Any]:
    c = psycopg2.connect(dsn)
    yield c
    c.close()


_schema_no = iter(range(1000))


@pytest.fixture()
def schema(conn: Any) -> str:
    name = f"t{next(_schema_no)}"
    migrate(conn, name)
    return name


def raw(seq: int, sub: int = 0, *, shard: str = "shardId-000", value: float = 1.0) -> RawRow:
    return RawRow(
        stream="s",
        shard=shard,
        sequence=49_000_000_000_000_000_000_000_000_000_000_000_000_000_000 + seq,
        sub_sequence=sub,
        partition_key=f"pk{seq}",
        arrival_ms=1_700_000_000_000 + seq,
        event_ts_ms=1_700_000_000_000 + seq,
        key=("dev-1", "temp"),
        value=value,
        payload=f'{{"v": {value}, "text": "a,b\\n\\"q\\""}}',
    )


def result(rid: str, shard: str, count: int, total: float, lo: float, hi: float) -> ResultRow:
    return ResultRow(
        result_id=rid,
        kind="tumbling",
        start_ms=60_000,
        end_ms=120_000,
        key=("dev-1", "temp"),
        shard_id=shard,
        count=count,
        sum=total,
        min=lo,
        max=hi,
        mean=total / count,
        first_ts_ms=60_001,
        last_ts_ms=119_000,
        is_final=False,
        quantiles={"p50": 1.5},
        version=result_version(count, False),
    )


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        out: list[tuple[Any, ...]] = cur.fetchall()
    conn.rollback()
    return out


def duplicates(conn: Any, schema: str, spec: TableSpec) -> list[tuple[Any, ...]]:
    cols = ", ".join(spec.identity)
    return rows(
        conn,
        f"SELECT {cols}, count(*) FROM {schema}.{spec.name} GROUP BY {cols} HAVING count(*) > 1",
    )


def loader(schema: str, staging: S3StagingStore, merge: bool = True) -> RedshiftLoader:
    return RedshiftLoader(schema, PostgresDialect(), staging, use_merge=merge)


def test_migrate_is_idempotent_and_creates_no_primary_keys(conn: Any, schema: str) -> None:
    migrate(conn, schema)
    tables = rows(
        conn,
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}' "
        "ORDER BY table_name",
    )
    assert tables == [("raw_records",), ("shard_fences",), ("window_results",),
                      ("window_results_merged",)]
    keys = rows(
        conn,
        "SELECT count(*) FROM information_schema.table_constraints "
        f"WHERE table_schema = '{schema}' AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')"
        " AND table_name <> 'shard_fences'",  # our control table, not data
    )
    assert keys == [(0,)]


@pytest.mark.parametrize("merge", [True, False], ids=["merge", "delete_insert"])
def test_replayed_and_overlapping_batches_do_not_duplicate(
    conn: Any, schema: str, staging: S3StagingStore, merge: bool
) -> None:
    ld = loader(schema, staging, merge)
    batch = [raw(i, sub) for i in range(50) for sub in range(2)]
    assert ld.load(conn, RAW_BINDING, batch, "b0") == 100
    assert ld.load(conn, RAW_BINDING, batch, "b0") == 100  # replay of the same batch
    overlap = [raw(i, sub, value=2.0) for i in range(40, 70) for sub in range(2)]
    ld.load(conn, RAW_BINDING, overlap + overlap[:5], "b1")  # also duplicated within itself
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(140,)]
    assert duplicates(conn, schema, RAW_TABLE) == []
    # Overlapping rows took the newer version.
    assert rows(
        conn,
        f"SELECT count(*) FROM {schema}.raw_records WHERE value = 2.0",
    ) == [(60,)]


def test_values_round_trip_exactly(conn: Any, schema: str, staging: S3StagingStore) -> None:
    tricky = RawRow(
        stream="s",
        shard="shardId-001",
        sequence=10**55 + 7,
        sub_sequence=3,
        partition_key='p,"k"\n',
        arrival_ms=1,
        event_ts_ms=None,
        key=(None, "ünïcode \\N"),
        value=None,
        payload="x\x00" + "é" * 40_000,  # NUL and more than 65535 UTF-8 bytes
    )
    loader(schema, staging).load(conn, RAW_BINDING, [tricky], "tricky")
    got = rows(
        conn,
        "SELECT sequence_number, partition_key, event_ts_ms, device_id, metric, value, "
        f"octet_length(payload), payload_truncated FROM {schema}.raw_records",
    )
    assert got == [  # 65534: the cut never splits a 2-byte character
        (str(10**55 + 7), 'p,"k"\n', None, None, "ünïcode \\N", None, 65534, True)
    ]


texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.sampled_from(
    ["", "\\N", '"', ",", "\n", "\r\n", "\x00", "é" * 300]
)
_seq = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    pk=texts,
    device=st.none() | texts,
    value=st.none() | st.floats(allow_nan=False),
    ts=st.none() | st.integers(-(2**63), 2**63 - 1),
    payload=texts,
)
def test_csv_staging_round_trips_any_values(
    dsn: str,
    staging: S3StagingStore,
    pk: str,
    device: str | None,
    value: float | None,
    ts: int | None,
    payload: str,
) -> None:
    conn = psycopg2.connect(dsn)
    try:
        migrate(conn, "prop")
        row = RawRow("s", "sh", next(_seq), 0, pk, 1, ts, (device, "m"), value, payload)
        loader("prop", staging).load(conn, RAW_BINDING, [row], "")
        got = rows(
            conn,
            "SELECT partition_key, device_id, value, event_ts_ms, payload FROM prop.raw_records "
            f"WHERE sequence_number = '{row.sequence}'",
        )
        assert got == [
            (
                fit_varchar(pk, 1024),
                None if device is None else fit_varchar(device, 256),
                value,
                ts,
                fit_varchar(payload, 65535),
            )
        ]
    finally:
        conn.close()


def test_late_update_replaces_result_and_view_merges_shards(
    conn: Any, schema: str, staging: S3StagingStore
) -> None:
    ld = loader(schema, staging)
    ld.load(conn, RESULTS_BINDING, [result("r-a", "shard-a", 2, 3.0, 1.0, 2.0)], "a1")
    ld.load(conn, RESULTS_BINDING, [result("r-b", "shard-b", 3, 30.0, 5.0, 15.0)], "b1")
    # A late record in shard a: same result_id, new aggregates.
    ld.load(conn, RESULTS_BINDING, [result("r-a", "shard-a", 4, 10.0, 0.5, 6.0)], "a2")
    assert duplicates(conn, schema, RESULTS_TABLE) == []
    assert rows(
        conn, f"SELECT value_count, value_sum FROM {schema}.window_results WHERE result_id='r-a'"
    ) == [(4, 10.0)]
    merged = rows(
        conn,
        "SELECT window_key, value_count, value_sum, value_min, value_max, value_mean, "
        f"shard_count, is_final FROM {schema}.window_results_merged",
    )
    assert merged == [('["dev-1","temp"]', 7, 40.0, 0.5, 15.0, 40.0 / 7, 2, False)]


def test_failed_load_rolls_back_completely(conn: Any, schema: str, staging: S3StagingStore) -> None:
    ld = loader(schema, staging)
    ld.load(conn, RAW_BINDING, [raw(1)], "ok")

    class Failing(RedshiftLoader):
        def upsert_sql(self, spec: TableSpec) -> list[str]:
            return [*super().upsert_sql(spec), "SELECT 1 / 0"]  # fails after the MERGE ran

    bad = Failing(schema, PostgresDialect(), staging)
    with pytest.raises(psycopg2.errors.DivisionByZero):
        bad.load(conn, RAW_BINDING, [raw(1, value=9.0), raw(2), raw(3)], "bad")
    assert rows(conn, f"SELECT count(*), max(value) FROM {schema}.raw_records") == [(1, 1.0)]
    stage = rows(conn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'aether_stage_%'")
    assert stage == [(0,)]
    ld.load(conn, RAW_BINDING, [raw(2)], "after")  # the connection is usable again
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(2,)]


def test_sink_reconnects_after_connection_loss(
    dsn: str, conn: Any, schema: str, staging: S3StagingStore
) -> None:
    sink = raw_records_sink(
        loader(schema, staging),
        lambda: psycopg2.connect(dsn),
        Retrier("redshift-raw", Backoff(base_ms=1, cap_ms=5), retryable=retryable,
                sleep=lambda _: None),
    )
    as_protocol: Sink[RawRow] = sink  # mypy checks the sink fits the shared protocol
    assert as_protocol.write_batch([raw(1)], "k1").written == 1
    with conn.cursor() as cur:  # kill the sink's backend, as a failover would
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = current_database()"
        )
    conn.commit()
    assert sink.write_batch([raw(1), raw(2)], "k2").written == 2
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(2,)]
    sink.close()


def test_staging_outage_is_retried_until_stopped(dsn: str, schema: str) -> None:
    dead = S3Endpoint("http://127.0.0.1:9")  # discard port: nothing listens
    attempts = {"n": 0}

    def stop() -> bool:
        attempts["n"] += 1
        return attempts["n"] > 3

    retrier = Retrier("rs", Backoff(base_ms=1, cap_ms=2), retryable=retryable,
                      sleep=lambda _: None, should_stop=stop)
    sink = window_results_sink(
        loader(schema, S3StagingStore(dead.client(), BUCKET)),
        lambda: psycopg2.connect(dsn),
        retrier,
    )
    with pytest.raises(StopRetrying):
        sink.write_batch([result("r", "shard-a", 1, 1.0, 1.0, 1.0)], "k")
    assert retrier.total_retries == 3
    sink.close()


def test_results_sink_end_to_end(dsn: str, conn: Any, schema: str, staging: S3StagingStore) -> None:
    sink = window_results_sink(loader(schema, staging), lambda: psycopg2.connect(dsn))
    rows_in = [result(f"r{i}", "shard-a", i + 1, 2.0 * (i + 1), 1.0, 3.0) for i in range(5)]
    assert sink.write_batch(rows_in, "b1") == WriteOutcome(written=5)
    assert sink.write_batch(rows_in[:2], "b1-replay") == WriteOutcome(written=2)
    assert rows(conn, f"SELECT count(*) FROM {schema}.window_results") == [(5,)]
    sink.close()


def _staged_keys(store: S3StagingStore) -> list[str]:
    listing = store._client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _delete_failures() -> float:
    value = REGISTRY.get_sample_value("aetherstream_sink_batches_total",
                                      {"sink": STAGING_SINK, "outcome": "delete_failed"})
    return value or 0.0


def test_staged_object_is_deleted_after_the_load_commits(
    staging: S3StagingStore, conn: Any, schema: str
) -> None:
    store = S3StagingStore(staging._client, BUCKET, f"{schema}-staging/")
    seen: list[tuple[str, bytes]] = []

    class Watching(PostgresDialect):  # records what COPY read: the object existed until then
        def copy_into_stage(self, cursor: Any, spec: TableSpec, st: Any, key: str) -> None:
            seen.append((st.url(key), st.get(key)))
            super().copy_into_stage(cursor, spec, st, key)

    ld = RedshiftLoader(schema, Watching(), store)
    failures = _delete_failures()
    assert ld.load(conn, RAW_BINDING, [raw(5)], "batch-xyz") == 1
    assert seen[0][0] == f"s3://{BUCKET}/{schema}-staging/raw_records/batch-xyz.csv"
    assert seen[0][1].count(b"\n") == 1 and b'"pk5"' in seen[0][1]
    sink = window_results_sink(ld, lambda: conn)
    assert sink.write_batch([result("r1", "shard-a", 1, 1.0, 1.0, 1.0)], "").written == 1
    assert len(seen) == 2
    assert _staged_keys(store) == []  # both objects are gone, the rows are stored
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(1,)]
    assert rows(conn, f"SELECT count(*) FROM {schema}.window_results") == [(1,)]
    assert _delete_failures() == failures


def test_a_failed_load_keeps_its_staged_object(
    staging: S3StagingStore, conn: Any, schema: str
) -> None:
    """Rolled back: the object stays for the retry (which restages it) or for expiry."""
    store = S3StagingStore(staging._client, BUCKET, f"{schema}-staging/")

    class Failing(RedshiftLoader):
        def upsert_sql(self, spec: TableSpec) -> list[str]:
            return [*super().upsert_sql(spec), "SELECT 1 / 0"]

    with pytest.raises(psycopg2.errors.DivisionByZero):
        Failing(schema, PostgresDialect(), store).load(conn, RAW_BINDING, [raw(1)], "k")
    assert _staged_keys(store) == [f"{schema}-staging/raw_records/k.csv"]


def test_a_failed_delete_never_fails_the_load(
    staging: S3StagingStore, conn: Any, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The delete goes to a real boto3 client for an address where nothing listens (port 9),
    standing in for an S3 outage or a missing DeleteObject grant after the load committed:
    moto cannot be made to refuse only deletes."""
    dead = S3Endpoint("http://127.0.0.1:9").client()

    class DeleteUnreachable(S3StagingStore):
        def delete(self, key: str) -> None:
            dead.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    store = DeleteUnreachable(staging._client, BUCKET, f"{schema}-staging/")
    failures = _delete_failures()
    with caplog.at_level(logging.WARNING, logger="consumer.sinks.redshift"):
        assert loader(schema, store).load(conn, RAW_BINDING, [raw(1), raw(2)], "kept") == 2
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(2,)]
    assert _staged_keys(store) == [f"{schema}-staging/raw_records/kept.csv"]
    assert _delete_failures() == failures + 1
    [record] = [r for r in caplog.records if "not deleted" in r.getMessage()]
    assert record.object == f"s3://{BUCKET}/{schema}-staging/raw_records/kept.csv"  # type: ignore[attr-defined]


def test_generated_merge_uses_only_redshift_form() -> None:
    for spec in (RAW_TABLE, RESULTS_TABLE):
        sql = merge_sql("analytics", spec)
        assert redshift_merge_problems(sql) == [], sql
        assert sql.count("WHEN MATCHED") == 1 and sql.count("WHEN NOT MATCHED") == 1
        assert "ON CONFLICT" not in sql.upper()
        for stmt in delete_insert_sql("analytics", spec):
            assert "ON CONFLICT" not in stmt.upper()


@pytest.mark.parametrize(
    "sql",
    [
        "MERGE INTO a.t AS t USING s ON t.id = s.id WHEN MATCHED AND s.x > 1 THEN UPDATE SET "
        "x = s.x WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
        "MERGE INTO a.t AS t USING s AS s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x "
        "WHEN NOT MATCHED THEN DO NOTHING",
        "MERGE INTO a.t AS t USING (SELECT * FROM s) AS s ON t.id = s.id WHEN MATCHED THEN "
        "UPDATE SET x = s.x WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
        "MERGE INTO a.t AS t USING s AS s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.x "
        "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
        "INSERT INTO a.t (id) SELECT id FROM s ON CONFLICT (id) DO UPDATE SET x = 1",
    ],
)
def test_lint_rejects_postgres_only_merge(sql: str) -> None:
    assert redshift_merge_problems(sql) != []


def test_production_copy_reads_from_s3_with_role() -> None:
    sql, params = RedshiftDialect("arn:aws:iam::1:role/r", "eu-west-1").copy_sql(
        RAW_TABLE, "s3://b/k.csv"
    )
    assert sql.startswith("COPY aether_stage_raw_records (stream, shard,")
    assert "FROM %s IAM_ROLE %s FORMAT AS CSV NULL AS %s REGION %s" in sql
    assert params == ["s3://b/k.csv", "arn:aws:iam::1:role/r", "\\N", "eu-west-1"]


@pytest.mark.parametrize("bad", ["Robert'); DROP", "a-b", "1abc", "", "x" * 64, "A"])
def test_identifiers_are_validated(bad: str) -> None:
    with pytest.raises(ValueError):
        ident(bad)


def test_the_fence_row_refuses_a_stale_tenure(conn: Any, schema: str,
                                              staging: S3StagingStore) -> None:
    """Inside the load transaction: a newer tenure takes the fence, an older one is refused
    (rolled back, nothing loaded), whichever order the loads come in."""
    migrate(conn, schema)
    ld = loader(schema, staging)

    def writer(owner: str, counter: int, spawned: int) -> ShardWriter:
        return ShardWriter("s", "shardId-000", FenceToken(owner, counter, spawned))

    old, new = writer("worker-a", 3, 100), writer("worker-b", 5, 50)
    assert ld.load(conn, RAW_BINDING, [raw(1)], "f1", old) == 1
    assert ld.load(conn, RAW_BINDING, [raw(2)], "f2", new) == 1  # takes the fence
    with pytest.raises(Fenced):
        ld.load(conn, RAW_BINDING, [raw(3)], "f3", old)
    # The same worker again, in a process spawned before the one holding it: refused too.
    assert ld.load(conn, RAW_BINDING, [raw(4)], "f4", writer("worker-b", 6, 60)) == 1
    with pytest.raises(Fenced):
        ld.load(conn, RAW_BINDING, [raw(5)], "f5", writer("worker-b", 9, 55))
    got = rows(conn, f"SELECT sequence_number FROM {schema}.raw_records ORDER BY 1")
    assert got == [(str(raw(i).sequence),) for i in (1, 2, 4)]
    assert rows(conn, f"SELECT owner, lease_counter, spawned_ns, loads FROM {schema}.shard_fences"
                ) == [("worker-b", 6, 60, 3)]


def test_a_stopped_backend_is_cut_by_the_deadline_and_the_load_retried(
    dsn: str, conn: Any, schema: str, staging: S3StagingStore
) -> None:
    """The sink's own backend is stopped with SIGSTOP (SIGCONT after): its 300 ms
    statement_timeout never runs and the kernel still answers keepalives, so only the client
    deadline ends the blocked load; the retrier reconnects (a new backend) and loads once."""
    events: list[RetryEvent] = []
    sink = raw_records_sink(
        loader(schema, staging),
        lambda: redshift_connect(dsn, connect_timeout_s=2, statement_timeout_ms=300,
                                 dialect="postgres"),
        Retrier("redshift-raw", Backoff(base_ms=1, cap_ms=5), retryable=is_retryable,
                on_retry=events.append),
    )
    sink.deadline_s = 1.0
    assert sink.write_batch([raw(1)], "").written == 1
    with sink._conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        stopped = int(cur.fetchone()[0])
    sink._conn.rollback()
    os.kill(stopped, signal.SIGSTOP)
    try:
        start = time.monotonic()
        assert sink.write_batch([raw(1), raw(2), raw(3)], "").written == 3
        elapsed = time.monotonic() - start
    finally:
        os.kill(stopped, signal.SIGCONT)
    sink.close()
    assert 0.9 <= elapsed < 4.0
    assert [type(e.error) for e in events] == [DeadlineExceeded]
    assert rows(conn, f"SELECT count(*) FROM {schema}.raw_records") == [(3,)]
    assert duplicates(conn, schema, RAW_TABLE) == []


@pytest.mark.parametrize(("statement", "failover", "expected"),
                         [(4000, 5000, 4.5), (4000, 10_000, 7.0), (300, 700, 0.5)])
def test_the_load_deadline_lies_between_statement_timeout_and_failover(
    statement: int, failover: int, expected: float
) -> None:
    deadline = load_deadline_s(statement, failover)
    assert deadline == expected
    assert statement / 1000 < deadline < failover / 1000


@pytest.mark.parametrize(("statement", "failover"), [(5000, 5000), (6000, 5000), (0, 5000)])
def test_the_load_deadline_needs_room_below_failover(statement: int, failover: int) -> None:
    with pytest.raises(ValueError):
        load_deadline_s(statement, failover)


GAP = 10


def session_results(events: list[tuple[int, int, str]], shard: str) -> list[ResultRow]:
    """Every session of (ts, value, key) events from one engine: nothing is late (a huge
    out-of-orderness), and close_all makes every session final."""
    engine = WindowEngine(WindowSpec(kind="session", gap_ms=GAP, out_of_orderness_ms=10**9),
                          shard)
    batch = [Event((key, "m"), ts, float(value), RawRecord(b"{}", "pk", Position(i, 0), 0))
             for i, (ts, value, key) in enumerate(events)]
    out = [*engine.process(batch, 0).results, *engine.close_all().results]
    return [result_row(r) for r in out]


def merged_sessions(conn: Any, schema: str) -> list[tuple[Any, ...]]:
    return rows(conn, "SELECT window_key, window_start_ms, window_end_ms, value_count,"
                      " value_sum, value_min, value_max, first_ts_ms, last_ts_ms"
                      f" FROM {schema}.window_results_merged WHERE window_kind = 'session'"
                      " ORDER BY 1, 2")


def test_sessions_split_by_a_reshard_merge_in_the_view(
    conn: Any, schema: str, staging: S3StagingStore
) -> None:
    """Parent and child each closed part of one key's session: one row, as one shard gives.
    Touching sessions ([.., 50) and [50, ..)) stay apart, as the engine keeps them."""
    parent = [(0, 1, "a"), (5, 2, "a"), (40, 4, "a")]  # [0, 15), [40, 50)
    child = [(12, 8, "a"), (20, 16, "a"), (50, 32, "a"), (3, 64, "b")]  # [12, 30), [50, 60)
    ld = loader(schema, staging)
    ld.load(conn, RESULTS_BINDING, session_results(parent, "shard-parent"), "")
    ld.load(conn, RESULTS_BINDING, session_results(child, "shard-child"), "")
    got = rows(conn, "SELECT window_key, window_start_ms, window_end_ms, value_count,"
                     f" value_sum, shard_count, is_final FROM {schema}.window_results_merged"
                     " ORDER BY 1, 2")
    assert got == [('["a","m"]', 0, 30, 4, 27.0, 2, True),
                   ('["a","m"]', 40, 50, 1, 4.0, 1, True),
                   ('["a","m"]', 50, 60, 1, 32.0, 1, True),
                   ('["b","m"]', 3, 13, 1, 64.0, 1, True)]
    assert merged_sessions(conn, schema) == sorted(
        (*_session_content(r),) for r in session_results(parent + child, "one"))


def _session_content(r: ResultRow) -> tuple[Any, ...]:
    return (key_text(r.key), r.start_ms, r.end_ms, r.count, r.sum, r.min, r.max,
            r.first_ts_ms, r.last_ts_ms)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 150), st.integers(-5, 5), st.sampled_from("ab"),
                          st.booleans()), min_size=1, max_size=40))
def test_merged_sessions_equal_one_engine_over_all_records(
    conn: Any, staging: S3StagingStore, events: list[tuple[int, int, str, bool]]
) -> None:
    """However a key's records are split between two shards, the view's sessions are the
    ones a single engine builds from all of them, by content."""
    migrate(conn, "sessions")
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE sessions.window_results")
    ld = loader("sessions", staging)
    for shard, on_b in (("shard-a", False), ("shard-b", True)):
        part = [(ts, v, k) for ts, v, k, b in events if b is on_b]
        ld.load(conn, RESULTS_BINDING, session_results(part, shard), "")
    want = sorted(_session_content(r) for r in session_results(
        [(ts, v, k) for ts, v, k, _ in events], "one"))
    assert merged_sessions(conn, "sessions") == want
