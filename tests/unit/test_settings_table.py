"""Every setting, one row each: a valid non-default value is accepted, a bad one is rejected
with a line naming the field, its value, its source and the rule; from env and from TOML.

The list of settings is derived from the dataclasses, so a field added without a row fails
test_every_setting_has_a_row. Cross-field rules have their own table below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, is_dataclass
from functools import reduce
from pathlib import Path
from typing import Any, get_type_hints

import pytest

from consumer.config import (
    FIELD_RULES,
    SECRETS,
    ConfigError,
    Settings,
    env_var,
    load_settings,
)

ARN = "arn:aws:iam::123456789012:role/RedshiftCopy"
# Schema versions: chosen by schema_version, or by the fields a record has.
BY_FIELD = json.dumps([{"name": "v1", "when": 1, "value_field": "temp"},
                       {"name": "v2", "when": [2, "2"]}])
BY_PRESENCE = json.dumps([{"name": "v1", "present": "temp", "value_field": "temp",
                           "fields": {"temp": "number", "unit": "string"}},
                          {"name": "v2"}])


@dataclass(frozen=True)
class Row:
    path: str
    good: Any  # valid, and not the default
    bad: Any = None  # None: no value of the right type is wrong
    rule: str = ""  # a fragment of the rule the bad value breaks
    context: dict[str, Any] = field(default_factory=dict)  # other settings both need


ROWS = [
    Row("stream.name", "orders-v2", "has space", "Kinesis stream name"),
    Row("stream.app_name", "orders-app", "ab", "DynamoDB table name"),
    Row("kcl.initial_position", "LATEST", "MIDDLE", "one of TRIM_HORIZON, LATEST"),
    Row("kcl.max_records", 500, 10_001, "1..10000"),
    Row("kcl.idle_time_between_reads_ms", 250, -1, "non-negative integer"),
    Row("kcl.failover_time_ms", 20_000, 0, "> 0"),
    Row("kcl.shard_sync_interval_ms", 60_000, 0, "> 0"),
    Row("kcl.shutdown_grace_ms", 30_000, 0, "shutdown_requested"),
    Row("kcl.metrics_level", "SUMMARY", "ALL", "one of NONE"),
    Row("kcl.worker_id", "worker-a", "a\nb", "properties file"),
    Row("kcl.max_leases_for_worker", 8, -1, "non-negative integer"),
    Row("kcl.java_heap_mb", 512, 0, "> 0"),
    Row("kcl.retrieval_mode", "FANOUT", "PUSH", "one of POLLING, FANOUT"),
    Row("kcl.class_archive", "/var/cache/aetherstream/kcl.jsa", "kcl.jsa", "absolute path"),
    Row("contract.key_fields", ("payload.device", "metric"), ("device", "a..b"),
        "dotted field paths"),
    Row("contract.ts_field", "meta.ts", "", "dotted field path"),
    Row("contract.value_field", "reading.value", ".value", "no empty segment"),
    Row("contract.ts_format", "iso", "unix", "one of auto, iso, epoch_ms"),
    Row("contract.version_field", "schema_version", "meta..version", "dotted field path",
        {"contract.versions": BY_FIELD}),
    Row("contract.versions", BY_PRESENCE, '{"name": "v1"}', "JSON array of objects"),
    Row("s3.bucket", "my-bucket.v2", "My_Bucket", "S3 bucket name"),
    Row("s3.archive_prefix", "archive/", "archive", "ending in '/'"),
    Row("s3.quarantine_prefix", "bad-records/", "/quarantine/", "not starting with '/'"),
    Row("s3.results_prefix", "windows/", "", "S3 key prefix"),
    Row("s3.state_prefix", "snapshots/", "state", "ending in '/'"),
    Row("s3.format", "parquet", "csv", "one of ndjson, parquet"),
    Row("flush.max_records", 100, 0, ">= 1"),
    Row("flush.max_bytes", 1_048_576, 0, ">= 1"),
    Row("flush.max_age_ms", 1000, 0, ">= 1"),
    Row("flush.max_buffer_bytes", 32 << 20, 1000, "(1 MiB)"),
    Row("metrics.host", "0.0.0.0", "", "bind address"),
    Row("metrics.port", 9500, 70_000, "0..65535"),
    Row("metrics.multiproc_dir", "/tmp/prom"),
    Row("metrics.cloudwatch", "emf", "yes", "one of off, emf, put"),
    Row("metrics.namespace", "Team/AetherStream", "AWS/Kinesis", "not starting with 'AWS/'"),
    Row("metrics.publish_interval_s", 30.0, 0.0, "> 0"),
    Row("metrics.max_heartbeat_age_s", 120.0, "nan", "finite non-negative number"),
    Row("metrics.bearer_token", "s3cr3t-Token_1", "two words", "RFC 6750"),
    Row("metrics.basic_auth", "scraper:pa ss", "nocolon", "user:password"),
    Row("windows.enabled", False, "maybe", "a boolean"),
    Row("windows.kind", "sliding", "hopping", "one of tumbling, sliding, session",
        {"windows.slide_ms": 15_000}),
    Row("windows.size_ms", 30_000, 0, "size_ms > 0"),
    Row("windows.slide_ms", 20_000, 7_000, "size_ms % slide_ms == 0",
        {"windows.kind": "sliding"}),
    Row("windows.gap_ms", 30_000, 0, "gap_ms > 0", {"windows.kind": "session"}),
    Row("windows.allowed_lateness_ms", 1000, -1, "non-negative integer"),
    Row("windows.out_of_orderness_ms", 0, -1, "non-negative integer"),
    Row("windows.idle_timeout_ms", 0, -1, "non-negative integer"),
    Row("windows.quantiles", True, "2", "a boolean"),
    Row("windows.max_state_bytes", 32 << 20, 1000, "(1 MiB)"),
    Row("redshift.enabled", True, "nope", "a boolean",
        {"redshift.host": "rs.internal", "redshift.copy_role_arn": ARN}),
    Row("redshift.dsn", "host=rs.internal dbname=dev", "not a dsn", "libpq connection string"),
    Row("redshift.host", "rs.internal", "a b", "whitespace"),
    Row("redshift.port", 5432, 0, "1..65535"),
    Row("redshift.database", "analytics", "", "not be empty"),
    Row("redshift.user", "loader"),
    Row("redshift.password", "pw"),
    Row("redshift.schema", "events_v2", "Events", "SQL identifier"),
    Row("redshift.dialect", "postgres", "mysql", "one of redshift, postgres"),
    Row("redshift.copy_role_arn", ARN, "RedshiftCopy", "IAM role ARN"),
    Row("redshift.upsert", "merge", "replace", "one of delete_insert, merge"),
    Row("redshift.staging_prefix", "staging/", "staging", "ending in '/'"),
    Row("redshift.load_raw", False, "perhaps", "a boolean"),
    Row("redshift.connect_timeout_s", 3, 1, ">= 2"),
    Row("redshift.statement_timeout_ms", 2000, 0, "turns the timeout off"),
    Row("opensearch.enabled", True, "si", "a boolean",
        {"opensearch.endpoint": "http://127.0.0.1:9200"}),
    Row("opensearch.endpoint", "https://search-x.us-east-1.es.amazonaws.com",
        "search-x.us-east-1.es.amazonaws.com", "http(s)://"),
    Row("opensearch.index_prefix", "metrics-v2", "Metrics", "OpenSearch index name"),
    Row("opensearch.auth", "none", "basic", "one of sigv4, none"),
    Row("opensearch.service", "aoss", "lambda", "one of es, aoss"),
    Row("opensearch.timeout_s", 2.5, 0.0, "> 0"),
    Row("log.level", "DEBUG", "TRACE", "one of DEBUG"),
    Row("run_dir", "/var/run/aetherstream", "", "not be empty"),
]
BY_PATH = {r.path: r for r in ROWS}
BAD_ROWS = [r for r in ROWS if r.bad is not None]


def leaf_paths(cls: type[Any], prefix: str = "") -> list[str]:
    """Independent of consumer.config's own walker, so a bug there cannot hide a field."""
    hints = get_type_hints(cls)
    out: list[str] = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out += leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def value_at(obj: Any, path: str) -> Any:
    return reduce(getattr, path.split("."), obj)


def env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return json.dumps(value)  # JSON string escapes are TOML basic-string escapes


def toml_doc(values: dict[str, Any]) -> str:
    top = [f"{p} = {toml_value(v)}" for p, v in values.items() if "." not in p]
    sections: dict[str, list[str]] = {}
    for p, v in values.items():
        if "." in p:
            section, name = p.split(".", 1)
            sections.setdefault(section, []).append(f"{name} = {toml_value(v)}")
    body = [f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()]
    return "\n".join(top + body) + "\n"


def load_via(via: str, values: dict[str, Any], tmp_path: Path) -> tuple[Settings, str]:
    """Load with these values set from env or from a TOML file; returns (settings, source)."""
    if via == "env":
        return load_settings(None, env={env_var(p): env_text(v) for p, v in values.items()}), ""
    path = tmp_path / "settings.toml"
    path.write_text(toml_doc(values))
    return load_settings(path, env={}), f"file {path}"


def rejection(via: str, values: dict[str, Any], tmp_path: Path) -> tuple[list[str], str]:
    with pytest.raises(ConfigError) as err:
        load_via(via, values, tmp_path)
    source = "" if via == "env" else f"file {tmp_path / 'settings.toml'}"
    return err.value.problems, source


def shown(path: str, value: Any) -> str:
    return f"<secret, {len(str(value))} chars>" if path in SECRETS else repr(value)


def test_every_setting_has_a_row() -> None:
    assert [r.path for r in ROWS] == leaf_paths(Settings)


def test_every_field_rule_is_a_real_setting() -> None:
    assert set(FIELD_RULES) <= set(leaf_paths(Settings))


def test_the_defaults_are_valid() -> None:
    assert load_settings(None, env={}) == Settings()


@pytest.mark.parametrize("via", ["env", "toml"])
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.path)
def test_a_valid_value_is_accepted(row: Row, via: str, tmp_path: Path) -> None:
    assert row.good != value_at(Settings(), row.path), "the row must test a non-default value"
    settings, _ = load_via(via, {**row.context, row.path: row.good}, tmp_path)
    assert value_at(settings, row.path) == row.good
    for path, value in row.context.items():
        assert value_at(settings, path) == value


@pytest.mark.parametrize("via", ["env", "toml"])
@pytest.mark.parametrize("row", BAD_ROWS, ids=lambda r: r.path)
def test_a_bad_value_is_rejected_naming_field_source_value_rule(
    row: Row, via: str, tmp_path: Path
) -> None:
    found, source = rejection(via, {**row.context, row.path: row.bad}, tmp_path)
    source = source or f"env {env_var(row.path)}"
    assert len(found) == 1, found
    line = found[0]
    assert line.startswith(f"{row.path}: "), line
    assert row.rule in line, line
    assert f"(from {source})" in line, line
    if row.path in SECRETS:
        assert str(row.bad) not in line, "a secret must not be echoed"
        assert "<secret," in line
    else:  # as typed (TOML, or env once coerced), or as the raw env text
        assert repr(row.bad) in line or repr(env_text(row.bad)) in line, line


@dataclass(frozen=True)
class Cross:
    name: str
    values: dict[str, Any]
    first: str  # the field the line starts with
    rule: str
    named: tuple[str, ...]  # every field the line must name, with its value and source


CROSS = [
    Cross("tumbling size 0", {"windows.size_ms": 0}, "windows.size_ms",
          "tumbling windows need size_ms > 0", ("windows.size_ms", "windows.kind")),
    Cross("sliding size 0", {"windows.kind": "sliding", "windows.size_ms": 0,
                             "windows.slide_ms": 1000},
          "windows.size_ms", "sliding windows need size_ms > 0",
          ("windows.size_ms", "windows.kind")),
    Cross("slide does not divide size", {"windows.kind": "sliding", "windows.slide_ms": 7000},
          "windows.slide_ms", "size_ms % slide_ms == 0",
          ("windows.slide_ms", "windows.size_ms", "windows.kind")),
    Cross("slide above size", {"windows.kind": "sliding", "windows.size_ms": 10_000,
                               "windows.slide_ms": 20_000},
          "windows.slide_ms", "slide_ms <= size_ms",
          ("windows.slide_ms", "windows.size_ms", "windows.kind")),
    Cross("sliding without slide", {"windows.kind": "sliding"}, "windows.slide_ms",
          "0 < slide_ms", ("windows.slide_ms", "windows.size_ms", "windows.kind")),
    Cross("session gap 0", {"windows.kind": "session"}, "windows.gap_ms",
          "session windows need gap_ms > 0", ("windows.gap_ms", "windows.kind")),
    Cross("ts is value", {"contract.ts_field": "value"}, "contract.key_fields",
          "distinct", ("contract.key_fields", "contract.ts_field", "contract.value_field")),
    Cross("value inside ts", {"contract.value_field": "ts.v"}, "contract.key_fields",
          "none inside another",
          ("contract.key_fields", "contract.ts_field", "contract.value_field")),
    Cross("duplicate key field", {"contract.key_fields": ("device_id", "device_id")},
          "contract.key_fields", "distinct", ("contract.key_fields",)),
    Cross("versions selected by a field without version_field",
          {"contract.versions": BY_FIELD}, "contract.versions",
          "versions[0] 'v1': 'when' needs the contract's version_field",
          ("contract.versions", "contract.version_field")),
    Cross("version_field without versions", {"contract.version_field": "schema_version"},
          "contract.versions", "no versions are declared",
          ("contract.versions", "contract.version_field")),
    Cross("a catch-all version before another",
          {"contract.versions": json.dumps([{"name": "any"}, {"name": "v2", "present": "x"}])},
          "contract.versions", "version 'any': has no selector",
          ("contract.versions", "contract.version_field")),
    Cross("a version's value field declared a string",
          {"contract.versions": json.dumps([{"name": "v1", "value_field": "temp",
                                             "fields": {"temp": "string"}}])},
          "contract.versions", "field 'temp' is declared string, but decode takes it only as "
          "number", ("contract.versions", "contract.version_field")),
    Cross("a version's unknown type", {"contract.versions": json.dumps(
              [{"name": "v1", "fields": {"unit": "text"}}])},
          "contract.versions", "versions[0] 'v1': field 'unit' has type 'text'",
          ("contract.versions", "contract.version_field")),
    Cross("a version's unknown key", {"contract.versions": json.dumps(
              [{"name": "v1", "value": "temp"}])},
          "contract.versions", "versions[0] 'v1': unknown key(s) value",
          ("contract.versions", "contract.version_field")),
    Cross("a version's paths clash", {"contract.versions": json.dumps(
              [{"name": "v1", "ts_field": "value.ts"}])},
          "contract.versions", "must be distinct and none inside another",
          ("contract.versions", "contract.version_field")),
    Cross("a version with fewer key fields", {"contract.versions": json.dumps(
              [{"name": "v1", "key_fields": ["device_id"]}])},
          "contract.versions", "schema versions ['v1'] have other than 2 key fields",
          ("contract.versions", "contract.key_fields")),
    Cross("redshift without dsn or host", {"redshift.enabled": True, "redshift.dialect":
                                           "postgres"},
          "redshift.enabled", "needs dsn or host",
          ("redshift.enabled", "redshift.dsn", "redshift.host")),
    Cross("redshift COPY without role", {"redshift.enabled": True, "redshift.host": "rs"},
          "redshift.copy_role_arn", "COPY needs copy_role_arn",
          ("redshift.copy_role_arn", "redshift.enabled", "redshift.dialect")),
    Cross("opensearch without endpoint", {"opensearch.enabled": True}, "opensearch.endpoint",
          "needs endpoint", ("opensearch.endpoint", "opensearch.enabled")),
    Cross("serverless unsigned", {"opensearch.service": "aoss", "opensearch.auth": "none"},
          "opensearch.auth", "only SigV4", ("opensearch.auth", "opensearch.service")),
    Cross("statement timeout at failover", {"redshift.statement_timeout_ms": 10_000},
          "redshift.statement_timeout_ms", "below kcl.failover_time_ms",
          ("redshift.statement_timeout_ms", "kcl.failover_time_ms")),
    Cross("connect timeout above failover", {"redshift.connect_timeout_s": 11},
          "redshift.connect_timeout_s", "below kcl.failover_time_ms",
          ("redshift.connect_timeout_s", "kcl.failover_time_ms")),
    Cross("opensearch timeout above failover", {"opensearch.timeout_s": 10.5},
          "opensearch.timeout_s", "below kcl.failover_time_ms",
          ("opensearch.timeout_s", "kcl.failover_time_ms")),
    Cross("failover below the timeouts", {"kcl.failover_time_ms": 3000,
                                          "redshift.connect_timeout_s": 2,
                                          "redshift.statement_timeout_ms": 2000},
          "opensearch.timeout_s", "below kcl.failover_time_ms",
          ("opensearch.timeout_s", "kcl.failover_time_ms")),
    Cross("two metrics auths", {"metrics.bearer_token": "tok", "metrics.basic_auth": "a:b"},
          "metrics.bearer_token", "at most one",
          ("metrics.bearer_token", "metrics.basic_auth")),
    Cross("staging inside archive", {"redshift.staging_prefix": "raw/staging/"},
          "s3.archive_prefix", "must not overlap",
          ("s3.archive_prefix", "redshift.staging_prefix")),
    Cross("two equal prefixes", {"s3.results_prefix": "quarantine/"}, "s3.quarantine_prefix",
          "must not overlap", ("s3.quarantine_prefix", "s3.results_prefix")),
]


@pytest.mark.parametrize("via", ["env", "toml"])
@pytest.mark.parametrize("case", CROSS, ids=lambda c: c.name)
def test_a_cross_field_rule_names_every_field_with_its_source(
    case: Cross, via: str, tmp_path: Path
) -> None:
    found, file_source = rejection(via, case.values, tmp_path)
    assert len(found) == 1, found
    line = found[0]
    assert line.startswith(f"{case.first}: "), line
    assert case.rule in line, line
    for path in case.named:
        if path in case.values:
            value, source = case.values[path], file_source or f"env {env_var(path)}"
        else:
            value, source = value_at(Settings(), path), "defaults"
        assert f"{path}={shown(path, value)} (from {source})" in line, (path, line)


def test_a_cross_field_error_names_a_file_and_an_env_var_together(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text('[windows]\nkind = "sliding"\nsize_ms = 60000\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={"AETHERSTREAM_WINDOWS_SLIDE_MS": "7000"})
    assert str(err.value) == (
        "windows.slide_ms: sliding windows need 0 < slide_ms <= size_ms and size_ms % slide_ms"
        " == 0; got windows.slide_ms=7000 (from env AETHERSTREAM_WINDOWS_SLIDE_MS), "
        f"windows.size_ms=60000 (from file {path}), windows.kind='sliding' (from file {path})"
    )


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"AETHERSTREAM_METRICS_PORT": "70000",
                                 "AETHERSTREAM_FLUSH_MAX_RECORDS": "lots",
                                 "AETHERSTREAM_S3_BUCKET": "Bad_Bucket"})
    fields_named = sorted(line.split(":", 1)[0] for line in err.value.problems)
    assert fields_named == ["flush.max_records", "metrics.port", "s3.bucket"]


def test_a_secret_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"AETHERSTREAM_REDSHIFT_DSN": "password=hunter2 oops"})
    assert "hunter2" not in str(err.value)
    assert re.match(r"redshift\.dsn: .*<secret, 21 chars> \(from env", str(err.value))
