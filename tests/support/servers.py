"""Real local servers for integration tests and the sink benchmark.

- PostgreSQL 16 via pgserver: the Redshift stand-in (same MERGE / DELETE USING subset).
- osmem-server: the OpenSearch stand-in (bulk semantics and per-item errors like OpenSearch).
- moto's ThreadedMotoServer: S3 with real HTTP (staging objects).

Each is a context manager so a test module can share one server through a module fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from consumer.local.servers import osmem, postgres

__all__ = ["S3Endpoint", "moto_s3", "osmem", "postgres"]

@dataclass(frozen=True)
class S3Endpoint:
    url: str

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}),
        )


@contextmanager
def moto_s3() -> Iterator[S3Endpoint]:
    """Start moto's server in this process (real HTTP on loopback)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint(f"http://{host}:{port}")
    finally:
        server.stop()


@contextmanager
def tcp_postgres() -> Iterator[str]:
    """PostgreSQL 16 on 127.0.0.1:<free port> (the local stack's own way of running it), for
    tests that need TCP between the client and the server (pgserver's default is a socket)."""
    import tempfile
    import threading
    from pathlib import Path

    from consumer.local import postgres as pg
    from consumer.local.procs import free_port

    root = Path(tempfile.mkdtemp(prefix="aether-tcp-pg-"))
    port = free_port()
    pg.init_pgdata(root / "data", root / "postgres.log")
    proc = pg.spawn(root / "data", port, root / "postgres.log")
    try:
        proc.wait_ready(lambda: proc.listens_on(port) and pg.accepts_connections(port), 60,
                        threading.Event())
        pg.create_database(port, "aetherstream")
        yield pg.dsn(port, "aetherstream")
    finally:
        proc.stop()
