"""The embedded local stack: Kinesis, DynamoDB, S3/CloudWatch/Logs, PostgreSQL and OpenSearch.

kinesis-mock (h2c, so the KCL works against it) and dynalite run on Node; moto serves S3,
CloudWatch and Logs; PostgreSQL 16 runs from pgserver's binaries; osmem stands in for
OpenSearch. Everything listens on 127.0.0.1 only, on free ports, and logs under the run dir.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
import psycopg2
from botocore.config import Config

from consumer.kcl.daemon import find_java
from consumer.local import leases, postgres
from consumer.local.procs import (
    LOCALHOST,
    ManagedProcess,
    ReadyWaiter,
    StartupError,
    free_port,
)
from consumer.local.tooling import (
    ensure_npm_packages,
    find_node,
    patched_kinesis_mock,
)

__all__ = [
    "Endpoints",
    "LocalStack",
    "StartupError",
    "boto3_client",
    "find_java",
    "find_node",
]

log = logging.getLogger(__name__)

DUMMY_KEY = "aetherstream-local"
READY_TIMEOUT = 60.0
DATABASE = "aetherstream"
# kinesis-mock holds streams in CREATING/UPDATING for this long (default 500ms each).
_KM_DURATIONS = (
    "CREATE_STREAM_DURATION", "DELETE_STREAM_DURATION", "UPDATE_SHARD_COUNT_DURATION",
    "SPLIT_SHARD_DURATION", "MERGE_SHARDS_DURATION", "UPDATE_STREAM_MODE_DURATION",
    "REGISTER_STREAM_CONSUMER_DURATION", "DEREGISTER_STREAM_CONSUMER_DURATION",
    "START_STREAM_ENCRYPTION_DURATION", "STOP_STREAM_ENCRYPTION_DURATION",
)


@dataclass(frozen=True)
class Endpoints:
    kinesis_endpoint: str
    dynamodb_endpoint: str
    s3_endpoint: str
    cloudwatch_endpoint: str
    region: str
    postgres_dsn: str
    opensearch_url: str


def boto3_client(service: str, endpoints: Endpoints) -> Any:
    """A boto3 client for one emulated service, with dummy credentials set explicitly."""
    urls = {
        "kinesis": endpoints.kinesis_endpoint,
        "dynamodb": endpoints.dynamodb_endpoint,
        "s3": endpoints.s3_endpoint,
        "cloudwatch": endpoints.cloudwatch_endpoint,
        "logs": endpoints.cloudwatch_endpoint,  # moto serves Logs on the same port
    }
    if service not in urls:
        raise ValueError(f"no local emulator for {service!r}; have {sorted(urls)}")
    config = Config(
        s3={"addressing_style": "path"},  # no bucket.127.0.0.1 virtual hosts locally
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    return boto3.client(
        service,
        endpoint_url=urls[service],
        region_name=endpoints.region,
        aws_access_key_id=DUMMY_KEY,
        aws_secret_access_key=DUMMY_KEY,
        config=config,
    )


class LocalStack:
    """Starts the whole local stack and stops it completely (context manager, atexit-safe)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        region: str = "us-east-1",
        postgres_dsn: str | None = None,
        cache_dir: Path | None = None,
        stream: str | None = None,
        shards: int = 4,
        bucket: str | None = None,
        ports: dict[str, int] | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        """ports pins ports by name: kinesis, kinesis_tls, dynamodb, moto, postgres, opensearch.

        stream/bucket, if given, are created by start(); postgres_dsn (or the env var
        AETHERSTREAM_POSTGRES_DSN) uses that server instead of starting one.
        """
        self.run_dir = Path(run_dir).resolve()
        self.region = region
        self._external_dsn = postgres_dsn or os.environ.get("AETHERSTREAM_POSTGRES_DSN")
        self._cache_dir = cache_dir
        self._stream, self._shards, self._bucket = stream, shards, bucket
        self._ports = dict(ports or {})
        self._ready_timeout = ready_timeout
        self._procs: list[ManagedProcess] = []
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()
        self.startup_seconds: dict[str, float] = {}

    # -- public API -------------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise RuntimeError("LocalStack is not started")
        return self._endpoints

    @property
    def pids(self) -> list[int]:
        """Pids of every server process we started."""
        return [p.pid for p in self._procs]

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def start(self) -> Endpoints:
        if self._endpoints is not None:
            return self._endpoints
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self._endpoints = self._start_all()
            if self._stream:
                self.create_stream(self._stream, self._shards)
            if self._bucket:
                self.create_bucket(self._bucket)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds["total"] = time.monotonic() - t0
        log.info("local stack ready in %.1f s: %s", self.startup_seconds["total"],
                 ", ".join(f"{k} {v:.1f} s" for k, v in self.startup_seconds.items()))
        return self._endpoints

    def create_stream(self, name: str, shards: int = 4) -> None:
        """Create a Kinesis stream (or reuse an existing one) and wait until it is ACTIVE."""
        kinesis = boto3_client("kinesis", self.endpoints)
        t0 = time.monotonic()
        try:
            kinesis.create_stream(StreamName=name, ShardCount=shards)
        except kinesis.exceptions.ResourceInUseException:
            log.info("stream %s already exists", name)
        deadline = t0 + 30
        while True:
            summary = kinesis.describe_stream_summary(StreamName=name)
            status = summary["StreamDescriptionSummary"]["StreamStatus"]
            if status == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise StartupError(f"kinesis-mock: stream {name} still {status} after 30 s")
            time.sleep(0.05)
        self.startup_seconds[f"stream {name}"] = time.monotonic() - t0
        log.info("stream %s ACTIVE with %d shards in %.2f s", name, shards,
                 time.monotonic() - t0)

    def prepare_leases(self, stream: str, table: str) -> int:
        """Write the KCL lease table for a fresh stream, so the daemon skips its 1-30 s wait.

        table is the KCL applicationName. Returns the leases written: 0 if the table already
        holds leases (KCL resumes from them) or the stream was resharded (KCL's job).
        """
        ddb = boto3_client("dynamodb", self.endpoints)
        shards = _list_shards(boto3_client("kinesis", self.endpoints), stream)
        try:
            items = leases.lease_items(shards)
        except leases.NotFreshStream as exc:
            log.warning("not preparing KCL leases for %s: %s", stream, exc)
            return 0
        with contextlib.suppress(ddb.exceptions.ResourceInUseException):
            ddb.create_table(TableName=table, **leases.TABLE_SCHEMA)
        ddb.get_waiter("table_exists").wait(TableName=table,
                                            WaiterConfig={"Delay": 0.05, "MaxAttempts": 200})
        if ddb.scan(TableName=table, Limit=1, ConsistentRead=True)["Items"]:
            log.info("lease table %s already holds leases; KCL resumes from them", table)
            return 0
        for item in items:  # conditional: never overwrite a lease a daemon wrote meanwhile
            with contextlib.suppress(ddb.exceptions.ConditionalCheckFailedException):
                ddb.put_item(TableName=table, Item=item,
                             ConditionExpression="attribute_not_exists(leaseKey)")
        log.info("lease table %s prepared with %d unowned leases", table, len(items))
        return len(items)

    def create_bucket(self, name: str) -> None:
        s3 = boto3_client("s3", self.endpoints)
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":  # S3 rejects an explicit us-east-1 constraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(**kwargs)
        log.info("bucket %s ready", name)

    def stop(self) -> None:
        """Stop every server we started; idempotent and safe from atexit."""
        with self._lock:
            procs, self._procs = self._procs, []
            t0 = time.monotonic()
            for proc in reversed(procs):
                log.info("stopping %s (pid %d)", proc.name, proc.pid)
                proc.stop()
            if procs:
                log.info("local stack stopped in %.1f s", time.monotonic() - t0)
            self._endpoints = None
            atexit.unregister(self.stop)

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- start-up ---------------------------------------------------------------------------

    def _start_all(self) -> Endpoints:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        modules = ensure_npm_packages(self._cache_dir)
        self.startup_seconds["npm packages"] = time.monotonic() - t0
        node, _ = find_node()
        km, km_tls = self._port("kinesis"), self._port("kinesis_tls")
        ddb, moto_port = self._port("dynamodb"), self._port("moto")
        # Spawn everything, then wait for all in parallel: the servers boot concurrently.
        kinesis = self._spawn_kinesis_mock(node, modules, km, km_tls)
        dynalite = self._spawn_dynalite(node, modules, ddb)
        moto = self._spawn_moto(moto_port)
        osmem = self._spawn_osmem()
        found: dict[str, str] = {}
        with ReadyWaiter(self._ready_timeout) as waiter:
            waiter.add(kinesis, lambda: kinesis.listens_on(km) and kinesis.listens_on(km_tls))
            waiter.add(dynalite, lambda: dynalite.listens_on(ddb))
            waiter.add(moto, lambda: moto.listens_on(moto_port))
            waiter.add(osmem, lambda: _osmem_url(osmem, found))
            self._start_postgres(waiter, found)  # initdb runs while the others boot
            self.startup_seconds.update(waiter.results())
        if "dsn" not in found:
            postgres.create_database(self._port("postgres"), DATABASE)
            found["dsn"] = postgres.dsn(self._port("postgres"), DATABASE)
        moto_url = f"http://{LOCALHOST}:{moto_port}"
        return Endpoints(
            kinesis_endpoint=f"http://{LOCALHOST}:{km}",
            dynamodb_endpoint=f"http://{LOCALHOST}:{ddb}",
            s3_endpoint=moto_url,
            cloudwatch_endpoint=moto_url,
            region=self.region,
            postgres_dsn=found["dsn"],
            opensearch_url=found["url"],
        )

    def _port(self, name: str) -> int:
        if name not in self._ports:
            port = free_port()
            while port in self._ports.values():  # pinned by the caller and not yet bound
                port = free_port()
            self._ports[name] = port
        return self._ports[name]

    def _spawn(self, name: str, argv: list[str], **kwargs: Any) -> ManagedProcess:
        proc = ManagedProcess.spawn(name, argv, self.log_dir / f"{name}.log", **kwargs)
        self._procs.append(proc)
        return proc

    def _spawn_kinesis_mock(self, node: str, modules: Path, port: int,
                            tls_port: int) -> ManagedProcess:
        main_js = patched_kinesis_mock(modules)
        env = {
            "KINESIS_MOCK_PLAIN_PORT": str(port),
            "KINESIS_MOCK_TLS_PORT": str(tls_port),  # always opened; bound to 127.0.0.1 too
            "KINESIS_MOCK_CERT_PATH": str(main_js.parent / "server.json"),
            "AWS_REGION": self.region,
            "SHOULD_PERSIST_DATA": "false",
            "LOG_LEVEL": "WARN",  # INFO logs every request
            **dict.fromkeys(_KM_DURATIONS, "10ms"),
        }
        return self._spawn("kinesis-mock", [node, str(main_js)], env=env, cwd=self.log_dir)

    def _spawn_dynalite(self, node: str, modules: Path, port: int) -> ManagedProcess:
        cli = modules / "dynalite" / "cli.js"
        keepalive = Path(__file__).with_name("dynalite_keepalive.js")
        argv = [node, "--require", str(keepalive), str(cli),
                "--host", LOCALHOST, "--port", str(port),
                "--createTableMs", "10", "--deleteTableMs", "10", "--updateTableMs", "10"]
        return self._spawn("dynalite", argv)

    def _spawn_moto(self, port: int) -> ManagedProcess:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
        prefix = [exe] if exe else [sys.executable, "-m", "moto.server"]
        return self._spawn("moto", [*prefix, "-H", LOCALHOST, "-p", str(port)])

    def _spawn_osmem(self) -> ManagedProcess:
        from osmem_server import resolve_binary

        address = f"{LOCALHOST}:{self._port('opensearch')}"
        argv = [resolve_binary(), "-addr", address, "-no-stdin-watch", "-no-ja",
                "-parent-pid", str(os.getpid())]  # dies with us even if atexit never runs
        return self._spawn("osmem", argv)

    def stop_postgres(self) -> None:
        """Stop our PostgreSQL (fast shutdown), keeping its data: a sink outage for tests."""
        with self._lock:
            for proc in [p for p in self._procs if p.name == "postgres"]:
                proc.stop()
                self._procs.remove(proc)

    def start_postgres(self, timeout: float = 30.0) -> None:
        """Start our PostgreSQL again on the same port and data after stop_postgres()."""
        port = self._port("postgres")
        proc = postgres.spawn(self.run_dir / "postgres", port, self.log_dir / "postgres.log")
        with self._lock:
            self._procs.append(proc)
        proc.wait_ready(lambda: proc.listens_on(port) and postgres.accepts_connections(port),
                        timeout, threading.Event())

    def _start_postgres(self, waiter: ReadyWaiter, found: dict[str, str]) -> None:
        """Use the external DSN, or initdb (first run only) and spawn our own server."""
        t0 = time.monotonic()
        if self._external_dsn:
            _check_dsn(self._external_dsn, "external PostgreSQL")
            found["dsn"] = self._external_dsn
            self.startup_seconds["postgres (external)"] = time.monotonic() - t0
            return
        port = self._port("postgres")
        log_path = self.log_dir / "postgres.log"
        postgres.init_pgdata(self.run_dir / "postgres", log_path)
        self.startup_seconds["postgres initdb"] = time.monotonic() - t0
        proc = postgres.spawn(self.run_dir / "postgres", port, log_path)
        self._procs.append(proc)
        waiter.add(proc, lambda: proc.listens_on(port) and postgres.accepts_connections(port))


def _list_shards(kinesis: Any, stream: str) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        shards += page["Shards"]
        if not page.get("NextToken"):
            return shards
        kwargs = {"NextToken": page["NextToken"]}


def _check_dsn(dsn: str, name: str) -> None:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.Error as exc:
        raise StartupError(f"{name}: cannot connect to {dsn}: {exc}") from exc
    conn.close()

def _osmem_url(proc: ManagedProcess, found: dict[str, str]) -> bool:
    """osmem prints one JSON line with its url once it listens; store it in found."""
    for line in proc.new_log_text().splitlines():
        if line.startswith("{") and '"url"' in line:
            with contextlib.suppress(ValueError, KeyError):
                found["url"] = str(json.loads(line)["url"])
                return True
    return False
