"""Real local servers for integration tests and the sink benchmark.

- PostgreSQL 16 via pgserver: the Redshift stand-in (same MERGE / DELETE USING subset).
- osmem-server: the OpenSearch stand-in (bulk semantics and per-item errors like OpenSearch).
- moto's ThreadedMotoServer: S3 with real HTTP (staging objects).

Each is a context manager so a test module can share one server through a module fixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# pgserver keeps its lock in XDG_RUNTIME_DIR and warns when it is unset or not private.
if "XDG_RUNTIME_DIR" not in os.environ:
    _runtime = os.path.join(tempfile.gettempdir(), f"aether-runtime-{os.getuid()}")
    os.makedirs(_runtime, mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = _runtime


@contextmanager
def postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL; yields a DSN. About 1-3 s."""
    from pgserver.postgres_server import get_server

    pgdata = tempfile.mkdtemp(prefix="aether-pg-")
    server = get_server(pgdata, cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@contextmanager
def osmem() -> Iterator[str]:
    """Start osmem-server on a free loopback port; yields its base URL."""
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    try:
        yield str(server.url)
    finally:
        server.close()


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
