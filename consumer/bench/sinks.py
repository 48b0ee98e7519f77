"""`aetherstream bench sinks`: staged loads vs row inserts, bulk vs single-document writes.

One run starts its own PostgreSQL (pgserver, the Redshift stand-in) and osmem-server (the
OpenSearch stand-in) unless --pg-dsn / --os-url are given, and writes the SAME rows both
ways. It prints one line per method and a ratio line per sink. The staged path includes
CSV encoding, staging (in memory here; S3 in production), COPY, in-batch dedupe and the
MERGE; the row path is a plain execute_values INSERT (no dedupe), so the ratio is
conservative. Targets on a 2-core box: staged >= 3x row inserts, bulk >= 10x single.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from consumer.local.servers import osmem, postgres
from consumer.sinks.base import RawRow, ResultRow
from consumer.sinks.opensearch import (
    IndexDoc,
    OpenSearchSink,
    install_templates,
    result_doc,
)
from consumer.sinks.redshift import (
    RAW_BINDING,
    RAW_TABLE,
    MemoryStagingStore,
    PostgresDialect,
    RedshiftLoader,
    migrate,
    table_rows,
)

T0 = 1_700_000_000_000


def make_raw_rows(n: int) -> list[RawRow]:
    return [
        RawRow(
            stream="bench",
            shard=f"shardId-{i % 4:03d}",
            sequence=49_600_000_000_000_000_000_000_000_000_000_000_000_000_000 + i,
            sub_sequence=0,
            partition_key=f"device-{i % 97}",
            arrival_ms=T0 + i,
            event_ts_ms=T0 + i - 50,
            key=(f"device-{i % 97}", "temperature"),
            value=20.0 + (i % 13) / 10,
            payload=f'{{"device_id":"device-{i % 97}","metric":"temperature","v":{i}}}',
        )
        for i in range(n)
    ]


def make_results(n: int) -> list[ResultRow]:
    return [
        ResultRow(
            result_id=f"{i:032x}",
            kind="tumbling",
            start_ms=T0 + (i // 100) * 60_000,
            end_ms=T0 + (i // 100 + 1) * 60_000,
            key=(f"device-{i % 100}", "temperature"),
            shard_id="shardId-000",
            count=10,
            sum=205.0,
            min=19.5,
            max=21.5,
            mean=20.5,
            first_ts_ms=T0,
            last_ts_ms=T0 + 59_000,
            is_final=True,
        )
        for i in range(n)
    ]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _best_of(
    repeat: int, setup: Callable[[], object], a: Callable[[], object], b: Callable[[], object]
) -> tuple[float, float]:
    """Fastest of `repeat` interleaved runs of a and b: the box is shared, and noise only
    ever adds time, so the minimum is the fairest estimate for both."""
    ta, tb = [], []
    for _ in range(repeat):
        setup()
        ta.append(_timed(a))
        setup()
        tb.append(_timed(b))
    return min(ta), min(tb)


def bench_redshift(dsn: str, n_rows: int, batch: int, repeat: int = 3,
                   upsert: str = "delete_insert") -> float:
    """Rows/s of a staged COPY + upsert over rows/s of execute_values; prints both."""
    import psycopg2
    from psycopg2.extras import execute_values

    rows = make_raw_rows(n_rows)
    conn = psycopg2.connect(dsn)

    def fresh_schemas() -> None:
        for schema in ("bench_staged", "bench_rows"):
            with conn, conn.cursor() as cur:
                cur.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            migrate(conn, schema)

    loader = RedshiftLoader("bench_staged", PostgresDialect(), MemoryStagingStore(),
                            use_merge=upsert == "merge")
    label = "COPY+MERGE" if upsert == "merge" else "COPY+DELETE/INSERT"

    def staged() -> None:
        for i, chunk in enumerate(_chunks(rows, batch)):
            loader.load(conn, RAW_BINDING, chunk, f"b{i}")

    cols = ", ".join(RAW_TABLE.column_names)
    insert = f"INSERT INTO bench_rows.raw_records ({cols}) VALUES %s"

    def row_inserts() -> None:  # execute_values with its default page size (100 rows)
        for chunk in _chunks(rows, batch):
            with conn, conn.cursor() as cur:
                execute_values(cur, insert,
                               table_rows(RAW_BINDING.fields, RAW_BINDING.columns(chunk)))

    try:
        t_rows, t_staged = _best_of(repeat, fresh_schemas, row_inserts, staged)
    finally:
        conn.close()
    print(
        f"redshift row inserts (execute_values): {n_rows} rows in {t_rows:.2f}s "
        f"= {n_rows / t_rows:,.0f} rows/s"
    )
    print(
        f"redshift staged {label} ({batch}/load): {n_rows} rows in {t_staged:.2f}s "
        f"= {n_rows / t_staged:,.0f} rows/s"
    )
    ratio = t_rows / t_staged
    print(f"ratio redshift staged/row-inserts: {ratio:.1f}x (target >= 3x)")
    return ratio


def bench_opensearch(url: str, n_docs: int, batch: int, repeat: int = 3) -> float:
    """Docs/s of bulk over docs/s of single index calls; prints both."""
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[url], timeout=60)

    def fresh_indices() -> None:  # every run creates its documents, none overwrites
        for prefix in ("bench-single", "bench-bulk"):
            client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
            install_templates(client, prefix)

    single_docs = [result_doc("bench-single", r) for r in make_results(n_docs)]
    bulk_docs = [result_doc("bench-bulk", r) for r in make_results(n_docs)]
    sink: OpenSearchSink[IndexDoc] = OpenSearchSink("bench", client, list)

    def single() -> None:
        for d in single_docs:
            client.index(index=d.index, id=d.doc_id, body=d.source)

    def bulk() -> None:
        for chunk in _chunks(bulk_docs, batch):
            sink.write_docs(chunk)

    t_single, t_bulk = _best_of(repeat, fresh_indices, single, bulk)
    print(
        f"opensearch single index calls: {n_docs} docs in {t_single:.2f}s "
        f"= {n_docs / t_single:,.0f} docs/s"
    )
    print(
        f"opensearch bulk ({batch}/request):  {n_docs} docs in {t_bulk:.2f}s "
        f"= {n_docs / t_bulk:,.0f} docs/s"
    )
    ratio = t_single / t_bulk
    print(f"ratio opensearch bulk/single: {ratio:.1f}x (target >= 10x)")
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aetherstream bench sinks", description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows for the Redshift part")
    parser.add_argument("--docs", type=int, default=2_000, help="docs for the OpenSearch part")
    parser.add_argument("--pg-batch", type=int, default=25_000)
    parser.add_argument("--upsert", choices=["delete_insert", "merge"], default="delete_insert",
                        help="the staged load's upsert (the service's default: delete_insert)")
    parser.add_argument("--os-batch", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N interleaved runs")
    parser.add_argument("--pg-dsn", help="use this PostgreSQL instead of starting pgserver")
    parser.add_argument("--os-url", help="use this OpenSearch instead of starting osmem")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        dsn = args.pg_dsn or stack.enter_context(postgres())
        url = args.os_url or stack.enter_context(osmem())
        bench_redshift(dsn, args.rows, args.pg_batch, args.repeat, args.upsert)
        bench_opensearch(url, args.docs, args.os_batch, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
