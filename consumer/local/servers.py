"""Single throwaway servers for benchmarks and tests: PostgreSQL (pgserver) and osmem-server.

The whole local stack lives in consumer/local/emulators.py; these are the lighter pieces a
benchmark or one integration test needs on its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def _private_runtime_dir() -> None:
    # pgserver keeps its lock in XDG_RUNTIME_DIR and warns when it is unset or not private.
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = os.path.join(tempfile.gettempdir(), f"aether-runtime-{os.getuid()}")
        os.makedirs(runtime, mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = runtime


@contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL 16; yields a DSN. About 1-3 s."""
    _private_runtime_dir()
    with warnings.catch_warnings():  # platformdirs' RuntimeDirWarning on import: harmless
        warnings.simplefilter("ignore")
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
    """osmem-server on a free loopback port; yields its base URL."""
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    try:
        yield str(server.url)
    finally:
        server.close()
