"""redshift_connect's bounds against a real PostgreSQL 16 (pgserver, the Redshift stand-in)
and, for the connect timeout, a loopback socket that accepts TCP and never answers (a hung
cluster: no server can be made to hang on purpose at connect time). query_deadline is tested
by stopping the test's own PostgreSQL backend processes with SIGSTOP (and SIGCONT after)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.extensions import parse_dsn

from consumer.sinks.clients import (
    DeadlineExceeded,
    query_deadline,
    redshift_connect,
    redshift_connect_kwargs,
)
from consumer.sinks.errors import ErrorKind, classify, is_retryable
from tests.support.servers import postgres
from tests.support.stub_servers import silent_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with postgres() as url:
        yield url


def _show(conn: Any, setting: str) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW {setting}")
        return str(cur.fetchone()[0])


@pytest.mark.parametrize("dialect", ["redshift", "postgres"])
def test_statement_timeout_cancels_a_long_query(dsn: str, dialect: str) -> None:
    conn = redshift_connect(dsn, connect_timeout_s=5, statement_timeout_ms=500,
                            dialect=dialect)  # type: ignore[arg-type]
    try:
        conn.rollback()  # the Redshift-dialect SET must outlive a rolled-back transaction
        assert _show(conn, "statement_timeout") == "500ms"
        start = time.monotonic()
        with pytest.raises(psycopg2.errors.QueryCanceled) as info, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(10)")
        elapsed = time.monotonic() - start
        conn.rollback()
        with conn.cursor() as cur:  # the connection is still usable after the cancel
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert 0.4 <= elapsed < 2.0
    assert classify(info.value) is ErrorKind.TIMEOUT
    assert is_retryable(info.value)


def test_keepalives_reach_libpq(dsn: str) -> None:
    conn = redshift_connect(dsn, connect_timeout_s=3, statement_timeout_ms=1000,
                            keepalives_idle_s=7, keepalives_interval_s=2, keepalives_count=4)
    try:
        params = conn.get_dsn_parameters()
    finally:
        conn.close()
    assert params["connect_timeout"] == "3"
    assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
            params["keepalives_count"]) == ("1", "7", "2", "4")
    assert params["tcp_user_timeout"] == str(1000 * (7 + 2 * 4))


def test_connect_timeout_bounds_a_silent_server(dsn: str) -> None:
    params = parse_dsn(dsn)
    with silent_server() as silent:
        start = time.monotonic()
        with pytest.raises(psycopg2.OperationalError) as info:
            redshift_connect(
                f"host=127.0.0.1 port={silent.port} user={params.get('user', 'postgres')} "
                "dbname=postgres sslmode=disable",
                connect_timeout_s=2,
                statement_timeout_ms=1000,
            )
        elapsed = time.monotonic() - start
        assert silent.accepted == 1
    assert 1.5 <= elapsed < 4.0
    assert "timeout expired" in str(info.value)
    assert classify(info.value) is ErrorKind.TIMEOUT


def test_bounds_are_validated() -> None:
    base: dict[str, Any] = {"connect_timeout_s": 5, "statement_timeout_ms": 1000,
                            "dialect": "redshift", "keepalives_idle_s": 10,
                            "keepalives_interval_s": 5, "keepalives_count": 3}
    assert "options" not in redshift_connect_kwargs(**base)
    assert redshift_connect_kwargs(**{**base, "dialect": "postgres"})["options"] == (
        "-c statement_timeout=1000")
    for bad in ({"connect_timeout_s": 1}, {"connect_timeout_s": 0}, {"statement_timeout_ms": 0},
                {"keepalives_count": 0}):
        with pytest.raises(ValueError):
            redshift_connect_kwargs(**{**base, **bad})


def _backend_pid(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    conn.rollback()
    return pid


def test_query_deadline_cuts_a_query_to_a_stopped_server(dsn: str) -> None:
    """A stopped backend never runs its statement_timeout; only the client deadline fires."""
    plain = redshift_connect(dsn, connect_timeout_s=2, statement_timeout_ms=300)
    bounded = redshift_connect(dsn, connect_timeout_s=2, statement_timeout_ms=300)
    pids = [_backend_pid(plain), _backend_pid(bounded)]
    outcome: list[BaseException | None] = []

    def query_without_deadline() -> None:
        try:
            with plain.cursor() as cur:
                cur.execute("SELECT 1")
            outcome.append(None)
        except psycopg2.Error as exc:
            outcome.append(exc)

    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        waiter = threading.Thread(target=query_without_deadline, daemon=True)
        waiter.start()
        start = time.monotonic()
        with (
            pytest.raises(DeadlineExceeded) as info,
            query_deadline(bounded, 1.0),
            bounded.cursor() as cur,
        ):
            cur.execute("SELECT 1")
        elapsed = time.monotonic() - start
        assert waiter.is_alive()  # 300 ms statement_timeout, yet still blocked after ~1 s
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    waiter.join(10)
    plain.close()
    bounded.close()
    assert 0.9 <= elapsed < 3.0
    assert is_retryable(info.value)
    assert classify(info.value) is ErrorKind.TIMEOUT
    assert isinstance(info.value.__cause__, psycopg2.OperationalError)
    assert bounded.closed
    assert len(outcome) == 1  # the plain query ended only once the server ran again


def test_query_deadline_leaves_a_healthy_connection_alone(dsn: str) -> None:
    conn = redshift_connect(dsn, connect_timeout_s=2, statement_timeout_ms=1000)
    try:
        with query_deadline(conn, 0.3), conn.cursor() as cur:
            cur.execute("SELECT 1")
        time.sleep(0.6)  # past the deadline: the timer was cancelled with the block
        with conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)
    finally:
        conn.close()
