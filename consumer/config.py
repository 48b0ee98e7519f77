"""Typed settings: defaults, then an optional TOML file, then environment variables.

Every setting lives in a section (`[kcl]`, `[s3]`, ...). The environment variable for
`section.field` is `AETHERSTREAM_SECTION_FIELD`; the TOML file is named by `--config` or
`AETHERSTREAM_CONFIG`. AWS settings follow boto3's own conventions (AWS_REGION,
AWS_ENDPOINT_URL_<SERVICE>, credential chain), so the same variables steer boto3 and KCL.

A bad value raises `ConfigError` naming the field and where the value came from.
"""

from __future__ import annotations

import os
import tomllib
import types
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

ENV_PREFIX = "AETHERSTREAM_"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the field and its source."""


@dataclass(frozen=True)
class StreamSettings:
    name: str = "aetherstream-events"
    app_name: str = "aetherstream"  # KCL applicationName, also the lease table name


@dataclass(frozen=True)
class KclSettings:
    initial_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    max_records: int = 1000
    idle_time_between_reads_ms: int = 500
    failover_time_ms: int = 10000
    shard_sync_interval_ms: int = 1000
    # 0 would make SIGTERM skip shutdown_requested, so processors could not checkpoint.
    shutdown_grace_ms: int = 20000
    metrics_level: Literal["NONE", "SUMMARY", "DETAILED"] = "NONE"
    worker_id: str = ""  # empty: hostname + pid
    max_leases_for_worker: int = 0  # 0: no limit
    java_heap_mb: int = 256


@dataclass(frozen=True)
class ContractSettings:
    key_fields: tuple[str, ...] = ("device_id", "metric")
    ts_field: str = "ts"
    value_field: str = "value"
    ts_format: Literal["auto", "iso", "epoch_ms"] = "auto"


@dataclass(frozen=True)
class S3Settings:
    bucket: str = "aetherstream-local"
    archive_prefix: str = "raw/"
    quarantine_prefix: str = "quarantine/"
    results_prefix: str = "results/"
    state_prefix: str = "state/"  # window-engine snapshots, one per checkpoint
    format: Literal["ndjson", "parquet"] = "ndjson"  # archive, quarantine and results objects


@dataclass(frozen=True)
class FlushSettings:
    """Firehose-style buffering hints: a buffer flushes when any one is reached."""

    max_records: int = 5000
    max_bytes: int = 4 * 1024 * 1024
    max_age_ms: int = 5000


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9400
    multiproc_dir: str = ""  # empty: <run dir>/prometheus
    cloudwatch: Literal["off", "emf", "put"] = "off"
    namespace: str = "AetherStream"
    publish_interval_s: float = 60.0
    max_heartbeat_age_s: float = 60.0
    bearer_token: str = ""
    basic_auth: str = ""


@dataclass(frozen=True)
class WindowSettings:
    """Event-time windows over (key fields) -> value; see consumer/windows/engine.py."""

    enabled: bool = True
    kind: Literal["tumbling", "sliding", "session"] = "tumbling"
    size_ms: int = 60_000
    slide_ms: int = 0  # sliding only
    gap_ms: int = 0  # session only
    allowed_lateness_ms: int = 0
    out_of_orderness_ms: int = 5_000
    idle_timeout_ms: int = 30_000  # 0: idle shards do not advance their watermark
    quantiles: bool = False


@dataclass(frozen=True)
class RedshiftSettings:
    enabled: bool = False
    # Either a libpq DSN, or its parts (ECS injects host, user, password... from Secrets
    # Manager as separate variables).
    dsn: str = ""
    host: str = ""
    port: int = 5439
    database: str = "dev"
    user: str = ""
    password: str = ""
    schema: str = "aetherstream"
    dialect: Literal["redshift", "postgres"] = "redshift"
    copy_role_arn: str = ""  # Redshift COPY ... IAM_ROLE
    # Both are Redshift's documented upserts from a staging table. DELETE USING + INSERT
    # measured faster here (aetherstream bench sinks --upsert merge compares).
    upsert: Literal["delete_insert", "merge"] = "delete_insert"
    staging_prefix: str = "redshift-staging/"
    load_raw: bool = True  # raw records too, not only window results

    def connect_dsn(self) -> str:
        if self.dsn or not self.host:
            return self.dsn
        from psycopg2.extensions import make_dsn

        return str(make_dsn(host=self.host, port=self.port, dbname=self.database,
                            user=self.user, password=self.password))


@dataclass(frozen=True)
class OpenSearchSettings:
    enabled: bool = False
    endpoint: str = ""  # URL of the domain (or of osmem-server locally)
    index_prefix: str = "aetherstream"


@dataclass(frozen=True)
class CommitSettings:
    # DynamoDB table of shard epochs (fencing); created by `aetherstream migrate`.
    # Empty: no fencing (KCL's own checkpoint check still refuses a lost lease).
    manifest_table: str = ""


@dataclass(frozen=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


@dataclass(frozen=True)
class Settings:
    stream: StreamSettings = field(default_factory=StreamSettings)
    kcl: KclSettings = field(default_factory=KclSettings)
    contract: ContractSettings = field(default_factory=ContractSettings)
    s3: S3Settings = field(default_factory=S3Settings)
    flush: FlushSettings = field(default_factory=FlushSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    windows: WindowSettings = field(default_factory=WindowSettings)
    redshift: RedshiftSettings = field(default_factory=RedshiftSettings)
    opensearch: OpenSearchSettings = field(default_factory=OpenSearchSettings)
    commit: CommitSettings = field(default_factory=CommitSettings)
    log: LogSettings = field(default_factory=LogSettings)
    run_dir: str = "run"


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Defaults < TOML file < environment. Raises ConfigError on any bad value."""
    env = dict(os.environ) if env is None else env
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    settings: Settings = _build(Settings, data, env, prefix="", source=str(path or "defaults"))
    return settings


def _build(
    cls: type[Any], data: dict[str, Any], env: dict[str, str], prefix: str, source: str
) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(sorted(prefix + u for u in unknown))}"
        )
    values: dict[str, Any] = {}
    for f in fields(cls):
        name = prefix + f.name
        hint = hints[f.name]
        if is_dataclass(hint):
            section = data.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
            values[f.name] = _build(hint, section, env, name + ".", source)  # type: ignore[arg-type]
            continue
        env_name = ENV_PREFIX + name.replace(".", "_").upper()
        if env_name in env:
            values[f.name] = _coerce(env[env_name], hint, name, f"env {env_name}")
        elif f.name in data:
            values[f.name] = _coerce(data[f.name], hint, name, source)
    return cls(**values)


def _coerce(raw: Any, hint: Any, name: str, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name}: expected {expected}, got {raw!r} (from {source})")

    origin = get_origin(hint)
    if origin is Literal:
        if raw not in get_args(hint):
            raise bad("one of " + ", ".join(map(str, get_args(hint))))
        return raw
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) and i for i in items):
            raise bad("a list of non-empty strings")
        return tuple(i.strip() for i in items)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(raw).lower() in ("1", "true", "yes", "on")
        raise bad("a boolean")
    if hint is int:
        try:
            value = int(raw) if not isinstance(raw, bool | float) else None
        except ValueError:
            value = None
        if value is None or value < 0:
            raise bad("a non-negative integer")
        return value
    if hint is float:
        try:
            fvalue = float(raw)
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not fvalue >= 0:
            raise bad("a non-negative number")
        return fvalue
    if hint is str or (isinstance(hint, types.UnionType)):
        if not isinstance(raw, str):
            raise bad("a string")
        return raw
    raise bad(f"a value of type {hint}")


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy with some section fields replaced (used by the local stack and tests)."""
    changes = {name: replace(getattr(settings, name), **vals) for name, vals in sections.items()}
    return replace(settings, **changes)


def to_env(settings: Settings) -> dict[str, str]:
    """Every setting as AETHERSTREAM_* variables: how the supervisor hands its resolved
    settings to the processor processes the daemon starts (they inherit its environment)."""
    env: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            value = getattr(obj, f.name)
            name = prefix + f.name
            if is_dataclass(value):
                walk(value, name + "_")
            elif isinstance(value, tuple):
                env[ENV_PREFIX + name.upper()] = ",".join(value)
            else:
                env[ENV_PREFIX + name.upper()] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )

    walk(settings, "")
    return env
