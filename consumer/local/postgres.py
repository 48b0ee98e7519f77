"""PostgreSQL 16 from the pgserver wheel, run as our own child on 127.0.0.1:<port>.

pgserver's own server handle daemonises postgres through pg_ctl and listens on a unix socket
only. We use its bundled binaries and its root helpers, but start `postgres` ourselves so it
is a managed process like the others: TCP DSN, log under the run dir, stopped by pid, and
killed with us if the caller dies.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import pwd
import signal
import subprocess
from pathlib import Path

import psycopg2

from consumer.local.procs import LOCALHOST, ManagedProcess, StartupError, log_tail

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
SYSTEM_USER = "pgserver"  # postgres refuses to run as root; pgserver's convention


def bin_dir() -> Path:
    """pgserver's bundled PostgreSQL 16 bin dir, found without importing pgserver.

    Importing pgserver creates lock dirs and warns about XDG_RUNTIME_DIR as a side effect.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StartupError("postgres: the pgserver package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def system_user() -> str | None:
    """The OS user to run postgres as: None normally, a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return SYSTEM_USER


def init_pgdata(pgdata: Path, log_path: Path) -> None:
    """initdb unless pgdata already holds a cluster (a reused run dir)."""
    if (pgdata / "PG_VERSION").exists():
        return
    user = system_user()
    pgdata.mkdir(parents=True, exist_ok=True)
    if user is not None:
        _grant_to(user, pgdata)
    argv = [str(bin_dir() / "initdb"), "-D", str(pgdata), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, user=user,
                              stdin=subprocess.DEVNULL, timeout=120, check=False)
    if proc.returncode != 0:
        raise StartupError(f"postgres initdb failed (exit {proc.returncode}); log {log_path}:\n"
                           f"{log_tail(log_path)}")


def _grant_to(user: str, pgdata: Path) -> None:
    """Let the unprivileged user reach pgdata (and own it) and run the bundled binaries."""
    for path in [*pgdata.parents, *bin_dir().parents]:
        _add_mode(path, 0o055)  # traverse + list for group/other
    _open_install()
    entry = pwd.getpwnam(user)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


@functools.cache
def _open_install() -> None:
    install = bin_dir().parent
    for path in [install, *install.rglob("*")]:
        executable = path.is_dir() or path.parent == bin_dir()
        _add_mode(path, 0o055 if executable else 0o044)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(mode | bits)


def spawn(pgdata: Path, port: int, log_path: Path) -> ManagedProcess:
    argv = [
        str(bin_dir() / "postgres"), "-D", str(pgdata),
        "-c", f"listen_addresses={LOCALHOST}", "-p", str(port),
        "-c", "unix_socket_directories=",  # TCP only: no socket-path length limits
        # A throwaway test server: durability off makes loads several times faster.
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ]
    # SIGINT is PostgreSQL's "fast shutdown": it disconnects clients instead of waiting.
    return ManagedProcess.spawn("postgres", argv, log_path, user=system_user(),
                                stop_signal=signal.SIGINT)


def dsn(port: int, database: str) -> str:
    return f"postgresql://{SUPERUSER}@{LOCALHOST}:{port}/{database}"


def accepts_connections(port: int) -> bool:
    """True once a login works (postgres listens before recovery has finished)."""
    try:
        conn = psycopg2.connect(dsn(port, "postgres"), connect_timeout=2)
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


def create_database(port: int, database: str) -> None:
    conn = psycopg2.connect(dsn(port, "postgres"))
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()
