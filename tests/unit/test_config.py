"""Settings: defaults < TOML < environment, and errors that name the field."""

from pathlib import Path

import pytest

from consumer.config import ConfigError, load_settings, to_env


def test_defaults_toml_then_env(tmp_path: Path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('[flush]\nmax_records = 10\n[contract]\nkey_fields = ["a", "b.c"]\n')
    s = load_settings(toml, env={"AETHERSTREAM_FLUSH_MAX_RECORDS": "20"})
    assert s.flush.max_records == 20
    assert s.contract.key_fields == ("a", "b.c")
    assert s.kcl.shutdown_grace_ms == 20000


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AETHERSTREAM_FLUSH_MAX_RECORDS": "lots"}, "flush.max_records"),
        ({"AETHERSTREAM_KCL_INITIAL_POSITION": "MIDDLE"}, "kcl.initial_position"),
        ({"AETHERSTREAM_METRICS_CLOUDWATCH": "maybe"}, "metrics.cloudwatch"),
        ({"AETHERSTREAM_FLUSH_MAX_AGE_MS": "-5"}, "flush.max_age_ms"),
    ],
)
def test_bad_env_value_names_the_field_and_source(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, env=env)
    assert needle in str(err.value)
    assert next(iter(env)) in str(err.value)


def test_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "b.toml"
    toml.write_text("[flush]\nmax_recods = 10\n")
    with pytest.raises(ConfigError, match=r"flush\.max_recods"):
        load_settings(toml, env={})


def test_to_env_round_trips() -> None:
    s = load_settings(
        None, env={"AETHERSTREAM_STREAM_NAME": "x", "AETHERSTREAM_FLUSH_MAX_BYTES": "77"}
    )
    assert load_settings(None, env=to_env(s)) == s
