"""Sink clients built with every bound explicit: OpenSearch (SigV4 or open) and Redshift.

Retries belong to our Retrier (consumer/sinks/retry.py, judged by consumer/sinks/errors.py),
so the libraries' own retries are off: a retry inside the client would hide time from the
Retrier's backoff and breaker, and multiply the worst-case wait.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported when a client is made: start-up pays only for the sinks in use
    import psycopg2.extensions
    from opensearchpy import OpenSearch

OpenSearchAuth = Literal["sigv4", "none"]
OpenSearchService = Literal["es", "aoss"]  # OpenSearch Service domains; OpenSearch Serverless
Dialect = Literal["redshift", "postgres"]


def opensearch_client(
    endpoint: str,
    *,
    auth: OpenSearchAuth,
    service: OpenSearchService,
    region: str,
    timeout_s: float,
) -> OpenSearch:
    """A client for `endpoint` (e.g. https://search-x.eu-west-1.es.amazonaws.com).

    auth="sigv4" signs every request with boto3's default credential chain; the credentials
    object is kept, not a snapshot, so refreshable credentials (ECS task role, SSO, assumed
    roles) are refreshed by the signer before they expire. auth="none" is for open local
    domains (osmem-server, a local OpenSearch).
    """
    from opensearchpy import OpenSearch, Urllib3AWSV4SignerAuth, Urllib3HttpConnection

    if timeout_s <= 0:
        raise ValueError(f"opensearch timeout must be positive, got {timeout_s}")
    http_auth: Any = None
    if auth == "sigv4":
        import boto3

        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ValueError(
                "opensearch auth is sigv4 but boto3's default credential chain found no "
                "credentials (env, profile, container or instance role)"
            )
        if not region:
            raise ValueError("opensearch auth is sigv4 but no region is set")
        http_auth = Urllib3AWSV4SignerAuth(credentials, region, service)
    elif auth != "none":
        raise ValueError(f"opensearch auth must be 'sigv4' or 'none', got {auth!r}")
    return OpenSearch(
        hosts=[endpoint],
        http_auth=http_auth,
        connection_class=Urllib3HttpConnection,  # the connection class the signer is for
        timeout=timeout_s,
        max_retries=0,
        retry_on_timeout=False,
    )


def redshift_connect_kwargs(
    *,
    connect_timeout_s: int,
    statement_timeout_ms: int,
    dialect: Dialect,
    keepalives_idle_s: int,
    keepalives_interval_s: int,
    keepalives_count: int,
) -> dict[str, Any]:
    """libpq parameters: the bounds on connecting and on a dead peer (pure)."""
    if connect_timeout_s < 2:
        # libpq treats 1 as 2 and 0 as "wait forever": neither is what a caller means.
        raise ValueError(f"connect_timeout_s must be at least 2, got {connect_timeout_s}")
    if statement_timeout_ms < 1:
        raise ValueError(f"statement_timeout_ms must be positive, got {statement_timeout_ms}")
    if min(keepalives_idle_s, keepalives_interval_s, keepalives_count) < 1:
        raise ValueError("keepalive settings must be positive")
    kwargs: dict[str, Any] = {
        "connect_timeout": connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": keepalives_idle_s,
        "keepalives_interval": keepalives_interval_s,
        "keepalives_count": keepalives_count,
        # Unacknowledged writes count too, not only idle time (Linux; libpq >= 12).
        "tcp_user_timeout": 1000 * (keepalives_idle_s + keepalives_interval_s * keepalives_count),
    }
    if dialect == "postgres":
        kwargs["options"] = f"-c statement_timeout={statement_timeout_ms}"
    return kwargs


def redshift_connect(
    dsn: str,
    *,
    connect_timeout_s: int,
    statement_timeout_ms: int,
    dialect: Dialect = "redshift",
    keepalives_idle_s: int = 10,
    keepalives_interval_s: int = 5,
    keepalives_count: int = 3,
) -> psycopg2.extensions.connection:
    """psycopg2.connect with a connect timeout, TCP keepalives and a statement timeout.

    PostgreSQL takes statement_timeout as a startup option; on Redshift it is set with SET
    (documented there), committed so that it outlives this first transaction. A statement
    over the limit fails with QueryCanceled (SQLSTATE 57014), which errors.py retries.
    """
    kwargs = redshift_connect_kwargs(
        connect_timeout_s=connect_timeout_s,
        statement_timeout_ms=statement_timeout_ms,
        dialect=dialect,
        keepalives_idle_s=keepalives_idle_s,
        keepalives_interval_s=keepalives_interval_s,
        keepalives_count=keepalives_count,
    )
    import psycopg2

    conn: psycopg2.extensions.connection = psycopg2.connect(dsn, **kwargs)
    if dialect == "redshift":
        try:
            with conn.cursor() as cur:
                cur.execute("SET statement_timeout TO %s", (statement_timeout_ms,))
            conn.commit()
        except BaseException:
            conn.close()
            raise
    return conn


class DeadlineExceeded(TimeoutError):
    """The server did not answer within a query_deadline; the connection was cut."""


@contextmanager
def query_deadline(conn: psycopg2.extensions.connection, seconds: float) -> Iterator[None]:
    """Bound the work on `conn` inside the block by a deadline kept on the client side.

    statement_timeout runs in the server and keepalives are answered by its kernel, so a
    server that is stopped (SIGSTOP, a frozen VM) blocks a query in a socket read forever.
    When the deadline passes, the socket is shut down from a timer thread: the blocked call
    fails at once, the connection is unusable (the caller reconnects) and DeadlineExceeded
    (a TimeoutError, so retryable) is raised from the driver's error. Do not close `conn`
    inside the block.
    """
    if seconds <= 0:
        raise ValueError(f"deadline must be positive, got {seconds}")
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def expire() -> None:
        with lock:
            if state["done"] or conn.closed:
                return
            state["fired"] = True
            # shutdown() acts on the socket itself, so a duplicate descriptor reaches it.
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        with lock:
            state["done"] = True
        if state["fired"]:
            raise DeadlineExceeded(f"no answer from the database within {seconds}s") from exc
        raise
    finally:
        with lock:
            state["done"] = True
        timer.cancel()
