"""consumer/sinks/schema.py: every output's shape derived from the contract's key fields.

The default contract must give exactly the tables, mappings and view of the release before
the schema was derived (written out here by hand), so existing warehouses and indices keep
working; other contracts name their raw key columns after their key fields, and a name that
cannot be stored is refused at start-up with the field named.
"""

from __future__ import annotations

import pytest

from consumer.config import load_settings, problems, with_overrides
from consumer.sinks.opensearch import index_templates
from consumer.sinks.redshift import (
    RAW_TABLE,
    RESULTS_TABLE,
    ddl_statements,
    merged_view_sql,
    raw_table,
)
from consumer.sinks.schema import DEFAULT_SCHEMA, column_name, key_columns, output_schema

RAW_COLUMNS = [
    ("stream", "VARCHAR(256)"), ("shard", "VARCHAR(256)"), ("sequence_number", "VARCHAR(64)"),
    ("sub_sequence_number", "BIGINT"), ("partition_key", "VARCHAR(1024)"),
    ("arrival_ms", "BIGINT"), ("event_ts_ms", "BIGINT"), ("device_id", "VARCHAR(256)"),
    ("metric", "VARCHAR(256)"), ("value", "DOUBLE PRECISION"), ("payload", "VARCHAR(65535)"),
    ("payload_truncated", "BOOLEAN"),
]
RESULT_COLUMNS = [
    ("result_id", "VARCHAR(128)"), ("window_kind", "VARCHAR(64)"),
    ("window_start_ms", "BIGINT"), ("window_end_ms", "BIGINT"),
    ("window_key", "VARCHAR(4096)"), ("shard_id", "VARCHAR(256)"),
    ("value_count", "BIGINT"), ("value_sum", "DOUBLE PRECISION"),
    ("value_min", "DOUBLE PRECISION"), ("value_max", "DOUBLE PRECISION"),
    ("value_mean", "DOUBLE PRECISION"), ("first_ts_ms", "BIGINT"), ("last_ts_ms", "BIGINT"),
    ("is_final", "BOOLEAN"), ("quantiles_json", "VARCHAR(4096)"), ("version", "BIGINT"),
]
KW = {"type": "keyword"}
DATE = {"type": "date", "format": "epoch_millis"}
RESULT_MAPPING = {
    "result_id": KW, "kind": KW, "window_start": DATE, "window_end": DATE, "key": KW,
    "key_text": KW, "shard_id": KW, "count": {"type": "long"}, "sum": {"type": "double"},
    "min": {"type": "double"}, "max": {"type": "double"}, "mean": {"type": "double"},
    "first_ts": DATE, "last_ts": DATE, "is_final": {"type": "boolean"},
    "quantiles": {"type": "object", "dynamic": True},
}
RAW_MAPPING = {
    "stream": KW, "shard": KW, "sequence": KW, "sub_sequence": {"type": "long"},
    "partition_key": KW, "arrival": DATE, "event_ts": DATE, "device_id": KW, "metric": KW,
    "value": {"type": "double"}, "payload": {"type": "text", "index": False},
}
MERGED_VIEW = """CREATE OR REPLACE VIEW a.window_results_merged AS
SELECT window_kind, window_start_ms, window_end_ms, window_key,
  SUM(value_count) AS value_count,
  SUM(value_sum) AS value_sum,
  MIN(value_min) AS value_min,
  MAX(value_max) AS value_max,
  CASE WHEN SUM(value_count) > 0
    THEN SUM(value_sum) / SUM(value_count) END AS value_mean,
  MIN(first_ts_ms) AS first_ts_ms,
  MAX(last_ts_ms) AS last_ts_ms,
  COUNT(DISTINCT shard_id) AS shard_count,
  BOOL_AND(is_final) AS is_final
FROM a.window_results
WHERE window_kind <> 'session'
GROUP BY window_kind, window_start_ms, window_end_ms, window_key
UNION ALL
SELECT window_kind, MIN(window_start_ms) AS window_start_ms,
  MAX(window_end_ms) AS window_end_ms, window_key,
  SUM(value_count) AS value_count,
  SUM(value_sum) AS value_sum,
  MIN(value_min) AS value_min,
  MAX(value_max) AS value_max,
  CASE WHEN SUM(value_count) > 0
    THEN SUM(value_sum) / SUM(value_count) END AS value_mean,
  MIN(first_ts_ms) AS first_ts_ms,
  MAX(last_ts_ms) AS last_ts_ms,
  COUNT(DISTINCT shard_id) AS shard_count,
  BOOL_AND(is_final) AS is_final
FROM (
  SELECT *, SUM(CASE WHEN reach IS NULL OR window_start_ms >= reach THEN 1 ELSE 0 END)
    OVER (PARTITION BY window_key ORDER BY window_start_ms, window_end_ms, shard_id, \
result_id ROWS UNBOUNDED PRECEDING) AS island
  FROM (
    SELECT *, MAX(window_end_ms) OVER (PARTITION BY window_key ORDER BY window_start_ms, \
window_end_ms, shard_id, result_id
      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM a.window_results
    WHERE window_kind = 'session'
  ) AS reaches
) AS islands
GROUP BY window_kind, window_key, island"""


def columns(spec: object) -> list[tuple[str, str]]:
    return [(c.name, c.sql_type) for c in spec.columns]  # type: ignore[attr-defined]


def test_the_default_contract_gives_the_released_tables_mappings_and_view() -> None:
    assert columns(RAW_TABLE) == RAW_COLUMNS
    assert RAW_TABLE.identity == ("stream", "shard", "sequence_number", "sub_sequence_number")
    assert columns(RESULTS_TABLE) == RESULT_COLUMNS
    assert (RESULTS_TABLE.identity, RESULTS_TABLE.version) == (("result_id",), "version")
    templates = index_templates("p")
    props = {k: t["template"]["mappings"]["properties"] for k, t in templates.items()}
    assert props == {"p-results": RESULT_MAPPING, "p-raw": RAW_MAPPING}
    assert list(props["p-raw"]) == list(RAW_MAPPING)  # in the same order too
    # CREATE OR REPLACE VIEW may not rename or reorder the columns of an existing view.
    assert merged_view_sql("a") == MERGED_VIEW


def test_key_fields_name_the_raw_columns_and_fields() -> None:
    schema = output_schema(("site", "sensor.id", "Channel-No"))
    assert columns(raw_table(schema))[7:10] == [
        ("site", "VARCHAR(256)"), ("sensor_id", "VARCHAR(256)"), ("channel_no", "VARCHAR(256)")]
    assert columns(raw_table(schema))[:7] + columns(raw_table(schema))[10:] == (
        RAW_COLUMNS[:7] + RAW_COLUMNS[9:])
    raw = index_templates("p", schema=schema)["p-raw"]["template"]["mappings"]["properties"]
    assert {k: raw[k] for k in ("site", "sensor_id", "channel_no")} == {
        "site": KW, "sensor_id": KW, "channel_no": KW}
    assert "device_id" not in raw and "metric" not in raw
    # Results hold the whole key as one array whatever the contract: their shape is fixed.
    results = index_templates("p", schema=schema)["p-results"]["template"]["mappings"]
    assert results["properties"] == RESULT_MAPPING
    ddl = "\n".join(ddl_statements("a", (raw_table(schema), RESULTS_TABLE)))
    assert "  site VARCHAR(256),\n  sensor_id VARCHAR(256),\n  channel_no VARCHAR(256)," in ddl


@pytest.mark.parametrize(("key_fields", "message"), [
    (("a.b", "a_b"), "'a_b' would be stored as 'a_b', which is taken by key field 'a.b'"),
    (("Site", "site"), "'site' would be stored as 'site', which is taken by key field 'Site'"),
    (("value",), "'value' would be stored as 'value', which is taken by a field every raw"),
    (("sequence",), "taken by a field every raw record has"),  # OpenSearch's name for it
    (("payload_truncated",), "taken by a field every raw record has"),  # Redshift's extra
    (("user",), "'user' would be stored as 'user', which is a reserved word in SQL"),
    (("order", "x"), "is a reserved word in SQL"),
    (("1st",), "'1st' would be stored as '1st', which must start with a letter"),
    (("_id",), "must start with a letter"),  # OpenSearch's metadata fields start with _
    (("x" * 64,), "at most 63 characters"),
])
def test_names_that_cannot_be_stored_are_refused_naming_the_field(
    key_fields: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=r"^key field ") as info:
        key_columns(key_fields)
    assert message in str(info.value)


def test_sanitizing() -> None:
    assert column_name("payload.Device-ID") == "payload_device_id"
    assert column_name("température") == "temp_rature"
    assert key_columns(("device_id", "metric")) == ("device_id", "metric")
    assert DEFAULT_SCHEMA.key_fields == ("device_id", "metric")


def test_the_settings_refuse_key_fields_the_sinks_cannot_store() -> None:
    settings = with_overrides(load_settings(None, env={}),
                              contract={"key_fields": ("site", "stream")})
    found = problems(settings)
    assert found == ["contract.key_fields: must name columns every sink can hold: key field "
                     "'stream' would be stored as 'stream', which is taken by a field every raw "
                     "record has; got contract.key_fields=('site', 'stream') (from defaults)"]
    ok = with_overrides(load_settings(None, env={}),
                        contract={"key_fields": ("site", "sensor", "channel")})
    assert problems(ok) == []
