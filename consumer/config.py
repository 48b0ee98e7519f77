"""Typed settings: defaults, then an optional TOML file, then environment variables.

Every setting lives in a section (`[kcl]`, `[s3]`, ...). The environment variable for
`section.field` is `AETHERSTREAM_SECTION_FIELD`; the TOML file is named by `--config` or
`AETHERSTREAM_CONFIG`. AWS settings follow boto3's own conventions (AWS_REGION,
AWS_ENDPOINT_URL_<SERVICE>, credential chain), so the same variables steer boto3 and KCL.

Every value is checked at load: its type, then its own rule (FIELD_RULES), then the rules
across fields (CROSS_RULES). A bad value raises `ConfigError`, one line per problem, naming the
field, the value, where it came from (env var, file or defaults) and the rule. Field
declarations stay plain `name: type = default` lines; rules live in the tables below them.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from functools import reduce
from itertools import combinations
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from consumer.records.contract import Contract, SchemaVersion, parse_versions
from consumer.sinks.schema import key_columns

ENV_PREFIX = "AETHERSTREAM_"


class ConfigError(ValueError):
    """Bad settings: one line per problem, each naming the field, its source and the rule."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


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
    # FANOUT (enhanced fan-out, SubscribeToShard) gives this consumer its own 2 MB/s per
    # shard: use it when the stream has another consumer, such as the Lambda path.
    retrieval_mode: Literal["POLLING", "FANOUT"] = "POLLING"
    # The daemon JVM's class-data archive (consumer/kcl/class_archive.py): a path, "auto"
    # (keyed, beside the KCL jars; the local stack's choice) or "" for none.
    class_archive: str = ""


@dataclass(frozen=True)
class ContractSettings:
    key_fields: tuple[str, ...] = ("device_id", "metric")
    ts_field: str = "ts"
    value_field: str = "value"
    ts_format: Literal["auto", "iso", "epoch_ms"] = "auto"
    # Schema versions (consumer/records/contract.py): the field `when` selectors read, and a
    # JSON array of versions. JSON rather than TOML tables so it has an env form too (the
    # supervisor hands settings to the processors as AETHERSTREAM_* variables).
    version_field: str = ""
    versions: str = ""

    def schema_versions(self) -> tuple[SchemaVersion, ...]:
        """The declared versions, the other contract fields as their defaults (ValueError
        naming the version and key when one is wrong)."""
        base = Contract(key_fields=self.key_fields, ts_field=self.ts_field,
                        value_field=self.value_field, ts_format=self.ts_format)
        return parse_versions(self.versions, base, self.version_field)


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

    # Sized for S3 objects of 1 MB and more at 1,000 records/s a shard: after 90 s of the demo's
    # records an archive object is ~3.4 MB gzipped, a results object (0.2 window results a
    # record) ~1.1 MB. 100,000 records of up to ~270 B fit max_buffer_bytes (each is charged
    # its bytes + pipeline.RECORD_OVERHEAD). A replay after failover is at most one such cut.
    max_records: int = 100_000
    max_bytes: int = 32 * 1024 * 1024
    max_age_ms: int = 90_000
    # What one shard's buffered records may hold in memory (each record charged once); over
    # it, processRecords commits and waits, which is how KCL's fetching slows down.
    max_buffer_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class MetricsSettings:
    host: str = "127.0.0.1"
    port: int = 9400
    multiproc_dir: str = ""  # empty: <run dir>/prometheus
    cloudwatch: Literal["off", "emf", "put"] = "off"
    namespace: str = "AetherStream"
    publish_interval_s: float = 60.0
    max_heartbeat_age_s: float = 60.0
    bearer_token: str = ""  # /metrics needs "Authorization: Bearer <token>"; at most one of these
    basic_auth: str = ""  # "user:password"


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
    # Open window state of one shard; past it the processor fails loudly instead of being
    # OOM-killed (more shards per task need a smaller value or more memory).
    max_state_bytes: int = 128 * 1024 * 1024


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
    connect_timeout_s: int = 4  # libpq: 0 waits forever, 1 counts as 2
    # Below kcl.failover_time_ms, and below the local stack's 5000 ms too.
    statement_timeout_ms: int = 4000

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
    auth: Literal["sigv4", "none"] = "sigv4"  # "none": an open (local) domain
    service: Literal["es", "aoss"] = "es"  # SigV4 service: OpenSearch Service or Serverless
    # Per request. Below kcl.failover_time_ms, and below the local stack's 5000 ms too.
    timeout_s: float = 4.0


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
    log: LogSettings = field(default_factory=LogSettings)
    run_dir: str = "run"


Sources = dict[str, str]
"""Where each setting's value came from, by dotted path ("kcl.failover_time_ms"):
"env AETHERSTREAM_...", "file <path>" or "defaults". A path missing from the map is a default."""


TRANSFORM_KEY = "transform"
AGGREGATION_KEY = "aggregation"  # [[aggregation]]: consumer/windows/aggconfig.py


def settings_path(env: Mapping[str, str] | None = None) -> str | None:
    """The settings file the service reads: $AETHERSTREAM_CONFIG, or None (defaults and
    environment only). The record processor loads the [[transform]] chain from it too."""
    env = os.environ if env is None else env
    return env.get(ENV_PREFIX + "CONFIG") or None


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Defaults < TOML file < environment, validated. Raises ConfigError on any bad value."""
    return load_settings_with_sources(path, env)[0]


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The settings file's TOML, or ConfigError naming the file."""
    try:
        return tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def settings_tables(path: str | Path, key: str) -> list[Any]:
    """The settings file's `[[key]]` array of tables (empty when there is none)."""
    tables = read_settings_file(path).get(key, [])
    if not isinstance(tables, list):
        raise ConfigError(f"file {path}: {key} must be an array of tables ([[{key}]])")
    return tables


def load_settings_with_sources(
    path: str | Path | None = None, env: dict[str, str] | None = None
) -> tuple[Settings, Sources]:
    """load_settings, and where each value came from (for later checks, e.g. `local up`'s)."""
    env = dict(os.environ) if env is None else env
    path = path or settings_path(env)
    data: dict[str, Any] = read_settings_file(path) if path else {}
    # The [[transform]] tables are an ordered chain, not a section of scalars: their own
    # loader (consumer/transform/config.py) reads and checks them from the same file; so do
    # the [[aggregation]] tables (consumer/windows/aggconfig.py).
    data.pop(TRANSFORM_KEY, None)
    data.pop(AGGREGATION_KEY, None)
    sources: Sources = {}
    type_errors: dict[str, str] = {}
    file_source = f"file {path}" if path else "defaults"
    settings: Settings = _build(Settings, data, env, "", file_source, sources, type_errors)
    validate(settings, sources, type_errors)
    return settings, sources


def env_var(path: str) -> str:
    """The environment variable of a setting: kcl.failover_time_ms -> AETHERSTREAM_KCL_..."""
    return ENV_PREFIX + path.replace(".", "_").upper()


def _build(
    cls: type[Any], data: dict[str, Any], env: dict[str, str], prefix: str, source: str,
    sources: Sources, type_errors: dict[str, str],
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
            values[f.name] = _build(hint, section, env, name + ".", source,  # type: ignore[arg-type]
                                    sources, type_errors)
            continue
        if env_var(name) in env:
            raw, sources[name] = env[env_var(name)], f"env {env_var(name)}"
        elif f.name in data:
            raw, sources[name] = data[f.name], source
        else:
            continue
        try:
            values[f.name] = _coerce(raw, hint, name, sources[name])
        except ConfigError as exc:  # collected: one start reports every bad value
            type_errors[name] = str(exc)
    return cls(**values)


def _coerce(raw: Any, hint: Any, name: str, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{name}: expected {expected}, got {_shown(name, raw)} (from {source})")

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
            fvalue = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            raise bad("a number") from None
        if not (math.isfinite(fvalue) and fvalue >= 0):
            raise bad("a finite non-negative number")
        return fvalue
    if hint is str or (isinstance(hint, types.UnionType)):
        if not isinstance(raw, str):
            raise bad("a string")
        return raw
    raise bad(f"a value of type {hint}")


# ---------------------------------------------------------------- rules, per field

# Never echoed in an error: a password, or a DSN that may hold one.
SECRETS = frozenset({"redshift.dsn", "redshift.password", "metrics.bearer_token",
                     "metrics.basic_auth"})


def _shown(path: str, value: Any) -> str:
    return f"<secret, {len(str(value))} chars>" if path in SECRETS else repr(value)


@dataclass(frozen=True)
class Rule:
    """A rule on one field's (already typed) value; `text` is what an error says it must be."""

    text: str
    ok: Callable[[Any], bool]


def _pattern(text: str, regex: str, empty_ok: bool = False) -> Rule:
    compiled = re.compile(regex)
    return Rule(text, lambda v: (empty_ok and v == "") or compiled.fullmatch(v) is not None)


def _at_least(low: float, why: str = "") -> Rule:
    return Rule(f"must be >= {low:g}{why}", lambda v: v >= low)


def _between(low: int, high: int, why: str = "") -> Rule:
    return Rule(f"must be {low}..{high}{why}", lambda v: low <= v <= high)


MAX_PATH_SEGMENTS = 32  # the record contract's max_depth: a deeper path could never match


def _dotted(path: str) -> bool:
    segments = path.split(".")
    return all(segments) and len(segments) <= MAX_PATH_SEGMENTS


def _json_objects(text: str) -> bool:
    try:
        items = json.loads(text)
    except ValueError:
        return False
    return isinstance(items, list) and all(isinstance(i, dict) for i in items)


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _libpq_dsn(dsn: str) -> bool:
    from psycopg2 import ProgrammingError  # only when a DSN is set: keeps start-up light
    from psycopg2.extensions import parse_dsn

    try:
        parse_dsn(dsn)
    except ProgrammingError:
        return False
    return True


POSITIVE = Rule("must be > 0", lambda v: v > 0)
NON_EMPTY = Rule("must not be empty", lambda v: v != "")
NO_SPACE = _pattern("must not contain whitespace", r"\S*")
DOTTED = Rule(f"must be a dotted field path (e.g. payload.device) with no empty segment and at "
              f"most {MAX_PATH_SEGMENTS} segments", _dotted)
# The CloudFormation template's AllowedPattern for prefixes, without a leading "/".
S3_PREFIX = _pattern("must be an S3 key prefix of A-Z a-z 0-9 ! _ . * ' ( ) - /, ending in '/' "
                     "and not starting with '/'", r"[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]*/")
DYNAMODB_TABLE = r"[A-Za-z0-9_.-]{3,255}"

FIELD_RULES: dict[str, Rule] = {
    "stream.name": _pattern("must be a Kinesis stream name: 1-128 of A-Z a-z 0-9 _ . -",
                            r"[A-Za-z0-9_.-]{1,128}"),
    "stream.app_name": _pattern("must be a DynamoDB table name (KCL's lease table): 3-255 of "
                                "A-Z a-z 0-9 _ . -", DYNAMODB_TABLE),
    "kcl.max_records": _between(1, 10_000, " (GetRecords' limit)"),
    "kcl.failover_time_ms": POSITIVE,
    "kcl.shard_sync_interval_ms": POSITIVE,
    "kcl.shutdown_grace_ms": Rule("must be > 0 (0 skips shutdown_requested, so no final "
                                  "checkpoint)", lambda v: v > 0),
    # Rendered into the daemon's .properties: a newline or backslash would change its meaning.
    "kcl.worker_id": _pattern("must be printable, without a backslash (it goes into the KCL "
                              "properties file)", r"[^\x00-\x1f\x7f\\]*"),
    "kcl.java_heap_mb": POSITIVE,
    "kcl.class_archive": Rule("must be empty, auto or an absolute path",
                              lambda v: v in ("", "auto") or os.path.isabs(v)),
    "contract.key_fields": Rule(f"must be one or more dotted field paths (e.g. device_id,"
                                f"payload.metric), no empty segment, at most "
                                f"{MAX_PATH_SEGMENTS} segments each",
                                lambda v: bool(v) and all(map(_dotted, v))),
    "contract.ts_field": DOTTED,
    "contract.value_field": DOTTED,
    "contract.version_field": Rule("must be empty or a dotted field path (e.g. "
                                   "schema_version), no empty segment",
                                   lambda v: v == "" or _dotted(v)),
    "contract.versions": Rule("must be empty or a JSON array of objects, one per schema "
                              "version", lambda v: v == "" or _json_objects(v)),
    "s3.bucket": _pattern("must be an S3 bucket name: 3-63 of a-z 0-9 . -, starting and ending "
                          "with a letter or digit, no '..'",
                          r"(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    "s3.archive_prefix": S3_PREFIX,
    "s3.quarantine_prefix": S3_PREFIX,
    "s3.results_prefix": S3_PREFIX,
    "s3.state_prefix": S3_PREFIX,
    "flush.max_records": _at_least(1),
    "flush.max_bytes": _at_least(1),
    "flush.max_age_ms": _at_least(1),
    "flush.max_buffer_bytes": _at_least(1 << 20, " (1 MiB)"),
    "windows.max_state_bytes": _at_least(1 << 20, " (1 MiB)"),
    "metrics.host": _pattern("must be a bind address (e.g. 127.0.0.1, 0.0.0.0), not empty, "
                             "no whitespace", r"\S+"),
    "metrics.port": _between(0, 65535, " (0: any free port)"),
    "metrics.namespace": _pattern("must be a CloudWatch namespace: 1-255 of A-Z a-z 0-9 . - _ / "
                                  "# : space, not starting with 'AWS/'",
                                  r"(?!AWS/)[A-Za-z0-9.\-_/#: ]{1,255}"),
    "metrics.publish_interval_s": POSITIVE,
    "metrics.max_heartbeat_age_s": POSITIVE,
    "metrics.bearer_token": _pattern("must be empty or an RFC 6750 token (A-Z a-z 0-9 - . _ ~ + /, "
                                     "then any '=')", r"[A-Za-z0-9\-._~+/]+=*", empty_ok=True),
    "metrics.basic_auth": _pattern("must be empty or user:password (user without ':', both "
                                   "non-empty, printable)", r"[^:\x00-\x1f\x7f]+:[^\x00-\x1f\x7f]+",
                                   empty_ok=True),
    "redshift.dsn": Rule("must be empty or a libpq connection string (key=value ... or "
                         "postgresql://...)", lambda v: v == "" or _libpq_dsn(v)),
    "redshift.host": NO_SPACE,
    "redshift.port": _between(1, 65535),
    "redshift.database": NON_EMPTY,
    # The same shape consumer/sinks/redshift.py ident() accepts (unquoted, lower case).
    "redshift.schema": _pattern("must be an SQL identifier: a-z or _, then a-z 0-9 _, at most 63",
                                r"[a-z_][a-z0-9_]{0,62}"),
    "redshift.copy_role_arn": _pattern("must be empty or an IAM role ARN "
                                       "(arn:aws:iam::<12 digits>:role/<name>)",
                                       r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                                       empty_ok=True),
    "redshift.staging_prefix": S3_PREFIX,
    "redshift.connect_timeout_s": _at_least(2, " (libpq's minimum; 0 would wait forever)"),
    "redshift.statement_timeout_ms": Rule("must be > 0 (0 turns the timeout off)",
                                          lambda v: v > 0),
    "opensearch.endpoint": Rule("must be empty or an http(s)://host[:port] URL",
                                lambda v: v == "" or _http_url(v)),
    "opensearch.index_prefix": _pattern("must start an OpenSearch index name: a-z 0-9, then "
                                        "a-z 0-9 _ . -, at most 100", r"[a-z0-9][a-z0-9_.-]{0,99}"),
    "opensearch.timeout_s": POSITIVE,
    "run_dir": NON_EMPTY,
}


# ---------------------------------------------------------------- rules across fields


@dataclass(frozen=True)
class Problem:
    """A cross-field rule broken, and the fields it reads (the error line starts with the
    first; every one is shown with its value and source)."""

    fields: tuple[str, ...]
    rule: str


def windows_rules(s: Settings) -> Iterator[Problem]:
    w = s.windows
    if not w.enabled:
        return
    if w.kind in ("tumbling", "sliding") and w.size_ms <= 0:
        yield Problem(("windows.size_ms", "windows.kind"), f"{w.kind} windows need size_ms > 0")
    elif w.kind == "sliding" and not (0 < w.slide_ms <= w.size_ms and w.size_ms % w.slide_ms == 0):
        yield Problem(("windows.slide_ms", "windows.size_ms", "windows.kind"),
                      "sliding windows need 0 < slide_ms <= size_ms and size_ms % slide_ms == 0")
    if w.kind == "session" and w.gap_ms <= 0:
        yield Problem(("windows.gap_ms", "windows.kind"), "session windows need gap_ms > 0")


def contract_rules(s: Settings) -> Iterator[Problem]:
    c = s.contract
    paths = (*c.key_fields, c.ts_field, c.value_field)
    # "a" and "a.b" cannot both hold: one needs a scalar where the other needs an object.
    clash = any(p == q or q.startswith(p + ".") for i, p in enumerate(paths)
                for j, q in enumerate(paths) if i != j)
    if clash:
        yield Problem(("contract.key_fields", "contract.ts_field", "contract.value_field"),
                      "the contract's field paths must be distinct and none inside another")
        return
    try:  # the raw records' columns are named after the key fields (consumer/sinks/schema.py)
        key_columns(c.key_fields)
    except ValueError as exc:
        yield Problem(("contract.key_fields",), f"must name columns every sink can hold: {exc}")
    try:
        versions = c.schema_versions()
        Contract(key_fields=c.key_fields, ts_field=c.ts_field, value_field=c.value_field,
                 ts_format=c.ts_format, version_field=c.version_field, versions=versions)
    except ValueError as e:
        yield Problem(("contract.versions", "contract.version_field"), f"schema versions: {e}")
        return
    # The sinks' key columns follow contract.key_fields by position (consumer/sinks/schema.py).
    odd = [v.name for v in versions if len(v.key_fields) != len(c.key_fields)]
    if odd:
        yield Problem(("contract.versions", "contract.key_fields"),
                      f"schema versions {odd} have other than {len(c.key_fields)} key fields, "
                      "as many as contract.key_fields, whose names the sinks' key columns take")


def sink_rules(s: Settings) -> Iterator[Problem]:
    r, o = s.redshift, s.opensearch
    if r.enabled and not (r.dsn or r.host):
        yield Problem(("redshift.enabled", "redshift.dsn", "redshift.host"),
                      "an enabled Redshift sink needs dsn or host")
    if r.enabled and r.dialect == "redshift" and not r.copy_role_arn:
        yield Problem(("redshift.copy_role_arn", "redshift.enabled", "redshift.dialect"),
                      "Redshift's COPY needs copy_role_arn")
    if o.enabled and not o.endpoint:
        yield Problem(("opensearch.endpoint", "opensearch.enabled"),
                      "an enabled OpenSearch sink needs endpoint")
    if o.service == "aoss" and o.auth != "sigv4":
        yield Problem(("opensearch.auth", "opensearch.service"),
                      "OpenSearch Serverless (aoss) accepts only SigV4-signed requests")


def timeout_rules(s: Settings) -> Iterator[Problem]:
    # A hung call must fail (to be retried or reported) within one lease period, so a hang
    # shows as an error rather than as a shard that quietly stops moving.
    failover = s.kcl.failover_time_ms
    for path, ms in (("redshift.connect_timeout_s", s.redshift.connect_timeout_s * 1000),
                     ("redshift.statement_timeout_ms", s.redshift.statement_timeout_ms),
                     ("opensearch.timeout_s", s.opensearch.timeout_s * 1000)):
        if not ms < failover:
            yield Problem((path, "kcl.failover_time_ms"),
                          "must be below kcl.failover_time_ms (compared in ms)")


def metrics_rules(s: Settings) -> Iterator[Problem]:
    if s.metrics.bearer_token and s.metrics.basic_auth:
        yield Problem(("metrics.bearer_token", "metrics.basic_auth"),
                      "set at most one of bearer_token and basic_auth")


PREFIXES = ("s3.archive_prefix", "s3.quarantine_prefix", "s3.results_prefix",
            "s3.state_prefix", "redshift.staging_prefix")


def prefix_rules(s: Settings) -> Iterator[Problem]:
    # One bucket: an overlap mixes object kinds in listings, and a lifecycle rule or a
    # cleanup on one prefix would delete the other's objects.
    for a, b in combinations(PREFIXES, 2):
        pa, pb = value_at(s, a), value_at(s, b)
        if pa.startswith(pb) or pb.startswith(pa):
            yield Problem((a, b), "S3 prefixes in one bucket must not overlap (neither may "
                                  "start with the other)")


CROSS_RULES: tuple[Callable[[Settings], Iterator[Problem]], ...] = (
    windows_rules, contract_rules, sink_rules, timeout_rules, metrics_rules, prefix_rules,
)


# ---------------------------------------------------------------- validation


def value_at(settings: Settings, path: str) -> Any:
    return reduce(getattr, path.split("."), settings)


def setting_paths(cls: type[Any] = Settings, prefix: str = "") -> list[str]:
    """Every leaf setting's dotted path, in declaration order."""
    hints = get_type_hints(cls)
    paths: list[str] = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            paths += setting_paths(hints[f.name], prefix + f.name + ".")
        else:
            paths.append(prefix + f.name)
    return paths


def problems(
    settings: Settings, sources: Mapping[str, str] | None = None,
    type_errors: Mapping[str, str] | None = None,
) -> list[str]:
    """Every rule the settings break, one line each naming field, value, source and rule, in
    declaration order. `type_errors` are the loader's, by path (those fields hold defaults).
    Cross-field rules run only once every field passes its own rule."""
    sources, type_errors = sources or {}, type_errors or {}

    def got(path: str) -> str:
        shown = _shown(path, value_at(settings, path))
        return f"{shown} (from {sources.get(path, 'defaults')})"

    found = []
    for path in setting_paths():
        rule = FIELD_RULES.get(path)
        if path in type_errors:
            found.append(type_errors[path])
        elif rule and not _holds(rule, value_at(settings, path)):
            found.append(f"{path}: {rule.text}, got {got(path)}")
    if found:
        return found
    for check in CROSS_RULES:
        for p in check(settings):
            found.append(f"{p.fields[0]}: {p.rule}; got "
                         + ", ".join(f"{f}={got(f)}" for f in p.fields))
    return found


def _holds(rule: Rule, value: Any) -> bool:
    try:
        return rule.ok(value)
    except (TypeError, ValueError):  # a wrong type set in code, past the loader's checks
        return False


def validate(
    settings: Settings, sources: Mapping[str, str] | None = None,
    type_errors: Mapping[str, str] | None = None,
) -> None:
    """Raise ConfigError listing every broken rule (see `problems`)."""
    found = problems(settings, sources, type_errors)
    if found:
        raise ConfigError(*found)


def sources_after(
    before: Settings, after: Settings, sources: Mapping[str, str], label: str
) -> Sources:
    """Sources for settings derived in code: each value that changed gets `label`."""
    out = dict(sources)
    for path in setting_paths():
        if value_at(before, path) != value_at(after, path):
            out[path] = label
    return out


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A copy with some section fields replaced (used by the local stack and tests). Not
    validated: call `validate` on the result where it matters (`local up` does)."""
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
