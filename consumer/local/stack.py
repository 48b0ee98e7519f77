"""`aetherstream local up`: the embedded emulators plus the same supervisor production runs.

The supervisor and its processors reach the emulators through boto3's own environment
variables (AWS_ENDPOINT_URL_<SERVICE>), which the KCL properties are rendered from too, so no
code path knows it is running locally.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from consumer.config import Settings, to_env, with_overrides
from consumer.kcl.supervisor import Supervisor
from consumer.local import stackfile
from consumer.local.emulators import DUMMY_KEY, Endpoints, LocalStack
from consumer.sinks.migrate import migrate_all

log = logging.getLogger(__name__)


def aws_env(endpoints: Endpoints) -> dict[str, str]:
    return {
        "AWS_REGION": endpoints.region,
        "AWS_DEFAULT_REGION": endpoints.region,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        "AWS_ENDPOINT_URL_KINESIS": endpoints.kinesis_endpoint,
        "AWS_ENDPOINT_URL_DYNAMODB": endpoints.dynamodb_endpoint,
        "AWS_ENDPOINT_URL_S3": endpoints.s3_endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH": endpoints.cloudwatch_endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": endpoints.cloudwatch_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


LOCAL_FLUSH_AGE_MS = 1000


def local_settings(settings: Settings) -> Settings:
    """Local defaults: faster failover and flushes (results show within seconds, not after
    production's minute), a free metrics port, the daemon's class archive."""
    return with_overrides(
        settings,
        metrics={"port": 0 if settings.metrics.port == 9400 else settings.metrics.port},
        flush={"max_age_ms": min(settings.flush.max_age_ms, LOCAL_FLUSH_AGE_MS)},
        kcl={
            "failover_time_ms": min(settings.kcl.failover_time_ms, 5000),
            "idle_time_between_reads_ms": 200,
            # The daemon starts about a second sooner from its second run on.
            "class_archive": settings.kcl.class_archive or "auto",
        },
    )


class LocalRun:
    """The stack and one supervisor; start() returns the line `local up` prints."""

    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        shards: int = 4,
        postgres_dsn: str | None = None,
        base_env: dict[str, str] | None = None,
        with_sinks: bool = True,
        prepare_leases: bool = True,
    ):
        self.settings = local_settings(replace(settings, run_dir=str(run_dir)))
        self.run_dir = run_dir.resolve()
        self.shards = shards
        self.stack = LocalStack(self.run_dir, postgres_dsn=postgres_dsn)
        self.supervisor: Supervisor | None = None
        self.endpoints: Endpoints | None = None
        self._base_env = base_env
        self.with_sinks = with_sinks
        self.prepare_leases = prepare_leases
        self.leases_prepared = 0

    def start_stack(self) -> Endpoints:
        self.endpoints = self.stack.start()
        self.stack.create_stream(self.settings.stream.name, self.shards)
        if self.prepare_leases:  # so the daemon starts in seconds (consumer/local/leases.py)
            self.leases_prepared = self.stack.prepare_leases(self.settings.stream.name,
                                                             self.settings.stream.app_name)
        self.stack.create_bucket(self.settings.s3.bucket)
        if self.with_sinks:
            # The local stack has all three sinks: PostgreSQL in Redshift's place, osmem.
            self.settings = with_overrides(
                self.settings,
                redshift={"enabled": True, "dsn": self.endpoints.postgres_dsn,
                          "dialect": "postgres"},
                opensearch={"enabled": True, "endpoint": self.endpoints.opensearch_url,
                            "auth": "none"},  # osmem is an open domain
            )
            migrate_all(self.settings)
        stackfile.write(self.run_dir, self.describe(), self.worker_exports())
        return self.endpoints

    def worker_exports(self) -> dict[str, str]:
        """What `aetherstream local env` prints: a worker's AWS and AETHERSTREAM_* variables."""
        assert self.endpoints is not None
        return {**aws_env(self.endpoints), **stackfile.settings_exports(self.settings)}

    def env(self) -> dict[str, str]:
        import os

        assert self.endpoints is not None
        env = dict(os.environ if self._base_env is None else self._base_env)
        env.update(aws_env(self.endpoints))
        env.update(to_env(self.settings))
        return env

    def start_supervisor(self) -> Supervisor:
        self.supervisor = Supervisor(self.settings, self.run_dir / "worker", self.env())
        self.supervisor.start()
        return self.supervisor

    def start(self) -> dict[str, Any]:
        try:
            self.start_stack()
            self.start_supervisor()
        except BaseException:
            self.stop()
            raise
        return self.describe()

    def describe(self) -> dict[str, Any]:
        assert self.endpoints is not None
        e = self.endpoints
        return {
            "kinesis_endpoint": e.kinesis_endpoint,
            "dynamodb_endpoint": e.dynamodb_endpoint,
            "s3_endpoint": e.s3_endpoint,
            "cloudwatch_endpoint": e.cloudwatch_endpoint,
            "region": e.region,
            "stream": self.settings.stream.name,
            "bucket": self.settings.s3.bucket,
            "app_name": self.settings.stream.app_name,
            "postgres_dsn": e.postgres_dsn,
            "opensearch_url": e.opensearch_url,
            "run_dir": str(self.run_dir),
            "metrics_url": self.supervisor.metrics_url if self.supervisor else "",
        }

    def stop(self) -> None:
        """Daemon first (processors checkpoint), then every server."""
        try:
            if self.supervisor:
                self.supervisor.stop()
        finally:
            stackfile.remove(self.run_dir)
            self.stack.stop()
