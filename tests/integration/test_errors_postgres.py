"""psycopg2 errors raised by a real PostgreSQL 16 (pgserver), classified.

PostgreSQL stands in for Redshift: same wire protocol and libpq client. Redshift's own
"1023 Serializable isolation violation" is SQLSTATE XX000 with message "1023" and the
violation in DETAIL; PostgreSQL raises exactly that shape through RAISE ... USING ERRCODE,
so psycopg2 builds the exception from a real server answer, as it would from Redshift.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.extensions import ISOLATION_LEVEL_SERIALIZABLE, parse_dsn

from consumer.sinks.errors import ErrorKind, classify, describe, is_retryable
from tests.support.servers import postgres
from tests.support.stub_servers import closed_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dsn() -> Iterator[str]:
    with postgres() as url:
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL, n int)")
            cur.execute("INSERT INTO acct VALUES (1, 'a', 0), (2, 'b', 0)")
            cur.execute("CREATE ROLE reader LOGIN")
            cur.execute("CREATE ROLE pwuser LOGIN PASSWORD 'right'")
        conn.close()
        yield url


def _conn(dsn: str, **kwargs: Any) -> Any:
    conn = psycopg2.connect(dsn, **kwargs)
    return conn


def _raised_sql(dsn: str, sql: str, **kwargs: Any) -> psycopg2.Error:
    conn = _conn(dsn, **kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    except psycopg2.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"expected {sql!r} to fail")


def test_serialization_failure_is_a_retryable_conflict(dsn: str) -> None:
    """Write skew between two SERIALIZABLE transactions: the second commit must fail."""
    one, two = _conn(dsn), _conn(dsn)
    for conn in (one, two):
        conn.set_isolation_level(ISOLATION_LEVEL_SERIALIZABLE)
    try:
        with one.cursor() as c1, two.cursor() as c2:
            c1.execute("SELECT sum(n) FROM acct")
            c2.execute("SELECT sum(n) FROM acct")
            c1.execute("UPDATE acct SET n = n + 1 WHERE id = 1")
            c2.execute("UPDATE acct SET n = n + 1 WHERE id = 2")
            one.commit()
            with pytest.raises(psycopg2.errors.SerializationFailure) as info:
                two.commit()
    finally:
        one.close()
        two.close()
    assert info.value.pgcode == "40001"
    assert classify(info.value) is ErrorKind.CONFLICT


def test_deadlock_is_a_retryable_conflict(dsn: str) -> None:
    one, two = _conn(dsn), _conn(dsn)
    errors: list[BaseException] = []
    try:
        c1, c2 = one.cursor(), two.cursor()
        c1.execute("UPDATE acct SET n = n WHERE id = 1")
        c2.execute("UPDATE acct SET n = n WHERE id = 2")

        def cross() -> None:
            try:
                c1.execute("UPDATE acct SET n = n WHERE id = 2")  # waits for two
            except psycopg2.Error as exc:
                errors.append(exc)

        waiter = threading.Thread(target=cross)
        waiter.start()
        try:
            c2.execute("UPDATE acct SET n = n WHERE id = 1")  # closes the cycle
        except psycopg2.Error as exc:
            errors.append(exc)
        two.rollback()  # frees the survivor if two was not the victim
        waiter.join(30)
    finally:
        one.close()
        two.close()
    assert len(errors) == 1, errors
    assert isinstance(errors[0], psycopg2.errors.DeadlockDetected)
    assert classify(errors[0]) is ErrorKind.CONFLICT


def test_redshift_1023_shape_is_a_retryable_conflict(dsn: str) -> None:
    exc = _raised_sql(
        dsn,
        "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', MESSAGE = '1023', "
        "DETAIL = 'Serializable isolation violation on table - 119371, transactions forming "
        "the cycle are: 1745830, 1745762 (pid:15021)'; END $$",
    )
    assert isinstance(exc, psycopg2.InternalError)
    assert exc.pgcode == "XX000"
    assert classify(exc) is ErrorKind.CONFLICT
    other = _raised_sql(dsn, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'XX000', "
                             "MESSAGE = 'Assert'; END $$")
    assert isinstance(other, psycopg2.InternalError)
    assert not is_retryable(other)  # any other internal error is fatal
    quoted = _raised_sql(dsn, "SELECT 'Serializable isolation violation'::int")
    assert isinstance(quoted, psycopg2.DataError)
    assert "Serializable isolation violation" in str(quoted)
    assert not is_retryable(quoted)  # the text alone, in a data error, is no conflict


@pytest.mark.parametrize(
    ("sql", "cls", "kind"),
    [
        ("SELECT * FROM absent", psycopg2.errors.UndefinedTable, ErrorKind.NOT_FOUND),
        ("SELECT absent FROM acct", psycopg2.errors.UndefinedColumn, ErrorKind.NOT_FOUND),
        ("SELECT * FROM nowhere.acct", psycopg2.errors.UndefinedTable, ErrorKind.NOT_FOUND),
        ("CREATE TABLE nowhere.t (x int)", psycopg2.errors.InvalidSchemaName, ErrorKind.NOT_FOUND),
        ("SELECT 'x'::int", psycopg2.DataError, ErrorKind.INVALID),
        ("INSERT INTO acct VALUES (1, 'dup', 0)", psycopg2.IntegrityError, ErrorKind.INVALID),
        ("INSERT INTO acct VALUES (9, NULL, 0)", psycopg2.IntegrityError, ErrorKind.INVALID),
        ("SELEC 1", psycopg2.ProgrammingError, ErrorKind.INVALID),
    ],
)
def test_schema_and_data_errors_are_fatal(
    dsn: str, sql: str, cls: type[BaseException], kind: ErrorKind
) -> None:
    exc = _raised_sql(dsn, sql)
    assert isinstance(exc, cls)
    assert classify(exc) is kind
    assert not is_retryable(exc)


def test_permission_denied_is_fatal(dsn: str) -> None:
    exc = _raised_sql(dsn, "SELECT * FROM acct", user="reader")
    assert isinstance(exc, psycopg2.errors.InsufficientPrivilege)
    assert classify(exc) is ErrorKind.AUTH


def _connect_error(**kwargs: Any) -> psycopg2.OperationalError:
    try:
        psycopg2.connect(**kwargs).close()
    except psycopg2.OperationalError as exc:
        return exc
    raise AssertionError("expected the connect to fail")


def test_unknown_role_database_and_wrong_password_are_fatal(dsn: str) -> None:
    params = parse_dsn(dsn)
    unknown = _connect_error(**{**params, "user": "ghost"})
    assert 'role "ghost" does not exist' in str(unknown)
    assert classify(unknown) is ErrorKind.AUTH
    no_db = _connect_error(**{**params, "dbname": "absent"})
    assert 'database "absent" does not exist' in str(no_db)
    assert classify(no_db) is ErrorKind.NOT_FOUND
    # Require a password for pwuser on every transport, then offer the wrong one.
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SHOW hba_file")
        (hba_file,) = cur.fetchone()  # type: ignore[misc]
        hba = Path(hba_file)
        original = hba.read_text()
        rules = "local all pwuser scram-sha-256\nhost all pwuser all scram-sha-256\n"
        hba.write_text(rules + original)
        cur.execute("SELECT pg_reload_conf()")
    try:
        wrong = _connect_error(**{**params, "user": "pwuser", "password": "wrong"})
    finally:
        hba.write_text(original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
    assert "password authentication failed" in str(wrong)
    assert wrong.pgcode is None  # libpq gives no SQLSTATE at connect time: text decides
    assert classify(wrong) is ErrorKind.AUTH


def test_connection_refused_is_retryable() -> None:
    exc = _connect_error(host="127.0.0.1", port=closed_port(), user="x", dbname="x",
                         connect_timeout=2)
    assert classify(exc) is ErrorKind.CONNECTION, describe(exc)


def test_statement_timeout_cancel_is_retryable(dsn: str) -> None:
    exc = _raised_sql(dsn, "SELECT pg_sleep(5)", options="-c statement_timeout=100")
    assert isinstance(exc, psycopg2.errors.QueryCanceled)
    assert classify(exc) is ErrorKind.TIMEOUT


def test_lost_connection_is_retryable(dsn: str) -> None:
    victim = _conn(dsn)
    killer = _conn(dsn)
    killer.autocommit = True
    try:
        with victim.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (pid,) = cur.fetchone()  # type: ignore[misc]
        with killer.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg2.OperationalError) as lost, victim.cursor() as cur:
            cur.execute("SELECT 1")
        with pytest.raises(psycopg2.InterfaceError) as closed:
            victim.cursor()
    finally:
        victim.close()
        killer.close()
    assert classify(lost.value) is ErrorKind.CONNECTION, describe(lost.value)
    assert "connection already closed" in str(closed.value)
    assert classify(closed.value) is ErrorKind.CONNECTION


def test_describe_names_sqlstate(dsn: str) -> None:
    exc = _raised_sql(dsn, "SELECT * FROM absent")
    text = describe(exc)
    assert text.startswith("UndefinedTable[42P01] (not_found): ")
    assert 'relation "absent" does not exist' in text
    assert "\n" not in text
