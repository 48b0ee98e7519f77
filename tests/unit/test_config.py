"""Settings: defaults < TOML < environment, and errors that name the field."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from consumer.config import (
    FIELD_RULES,
    MAX_PATH_SEGMENTS,
    ConfigError,
    load_settings,
    load_settings_with_sources,
    sources_after,
    to_env,
    validate,
    with_overrides,
)


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


def test_to_env_round_trips_every_new_setting() -> None:
    s = load_settings(None, env={"AETHERSTREAM_OPENSEARCH_AUTH": "none",
                                 "AETHERSTREAM_OPENSEARCH_SERVICE": "es",
                                 "AETHERSTREAM_OPENSEARCH_TIMEOUT_S": "2.5",
                                 "AETHERSTREAM_REDSHIFT_CONNECT_TIMEOUT_S": "3",
                                 "AETHERSTREAM_REDSHIFT_STATEMENT_TIMEOUT_MS": "1500",
                                 "AETHERSTREAM_METRICS_BASIC_AUTH": "u:p"})
    assert (s.opensearch.auth, s.opensearch.timeout_s, s.redshift.statement_timeout_ms) == (
        "none", 2.5, 1500)
    assert load_settings(None, env=to_env(s)) == s


def test_sources_name_env_file_and_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("[flush]\nmax_records = 10\nmax_bytes = 99\n")
    _, sources = load_settings_with_sources(toml, env={"AETHERSTREAM_FLUSH_MAX_RECORDS": "20"})
    assert sources["flush.max_records"] == "env AETHERSTREAM_FLUSH_MAX_RECORDS"
    assert sources["flush.max_bytes"] == f"file {toml}"
    assert "flush.max_age_ms" not in sources  # a default


def test_derived_settings_are_checked_with_their_own_source() -> None:
    """What `local up` does: settings changed in code get a label as their source."""
    s, sources = load_settings_with_sources(None, env={"AETHERSTREAM_OPENSEARCH_TIMEOUT_S": "6"})
    local = with_overrides(s, kcl={"failover_time_ms": 5000})
    with pytest.raises(ConfigError, match=re.escape(
        "opensearch.timeout_s: must be below kcl.failover_time_ms (compared in ms); got "
        "opensearch.timeout_s=6.0 (from env AETHERSTREAM_OPENSEARCH_TIMEOUT_S), "
        "kcl.failover_time_ms=5000 (from local)"
    )):
        validate(local, sources_after(s, local, sources, "local"))


@pytest.mark.parametrize("name", ["aetherstream", "_x", "a1_b2", "a" * 63, "a" * 64, "Schema",
                                  "1abc", "a-b", "a b", ""])
def test_schema_rule_agrees_with_the_redshift_sink(name: str) -> None:
    from consumer.sinks.redshift import ident

    try:
        ident(name)
        sink_accepts = True
    except ValueError:
        sink_accepts = False
    assert FIELD_RULES["redshift.schema"].ok(name) == sink_accepts


@pytest.mark.parametrize("depth", [1, MAX_PATH_SEGMENTS, MAX_PATH_SEGMENTS + 1])
def test_path_depth_rule_agrees_with_the_record_contract(depth: int) -> None:
    from consumer.records.contract import Contract

    path = ".".join(["f"] * depth)
    try:
        Contract(ts_field=path)
        contract_accepts = True
    except ValueError:
        contract_accepts = False
    assert FIELD_RULES["contract.ts_field"].ok(path) == contract_accepts


# ---------------------------------------------------------------- the command, for real

ROOT = Path(__file__).resolve().parents[2]


def cli(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, float]:
    """Run `python -m consumer.cli` in a clean environment; (exit code, stderr, seconds)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AETHERSTREAM_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "consumer.cli", *args], cwd=cwd, capture_output=True, text=True,
        env={**base, "PYTHONPATH": str(ROOT), **env}, timeout=60, check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - started


# A guard against start-up work before the check (a daemon, emulators), not a timing test.
FAST_S = 5.0


def test_run_exits_at_once_on_a_bad_env_value(tmp_path: Path) -> None:
    code, err, seconds = cli(["run", "--run-dir", str(tmp_path / "run")],
                             {"AETHERSTREAM_METRICS_PORT": "70000"}, tmp_path)
    assert code == 2
    assert err.splitlines() == [
        "aetherstream: config error: metrics.port: must be 0..65535 (0: any free port), got "
        "70000 (from env AETHERSTREAM_METRICS_PORT)"
    ]
    assert seconds < FAST_S
    assert not (tmp_path / "run").exists()  # nothing was started


def test_run_exits_at_once_on_a_bad_toml_cross_field_rule(tmp_path: Path) -> None:
    toml = tmp_path / "w.toml"
    toml.write_text('[windows]\nkind = "sliding"\nslide_ms = 7000\n')
    code, err, seconds = cli(["--config", str(toml), "run", "--run-dir", str(tmp_path / "run")],
                             {}, tmp_path)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("aetherstream: config error: windows.slide_ms: sliding windows need")
    assert f"windows.slide_ms=7000 (from file {toml})" in err
    assert "Traceback" not in err
    assert seconds < FAST_S


def test_local_up_exits_at_once_on_a_bad_setting(tmp_path: Path) -> None:
    code, err, seconds = cli(["local", "up", "--run-dir", str(tmp_path / "local")],
                             {"AETHERSTREAM_CONTRACT_TS_FIELD": ""}, tmp_path)
    assert code == 2
    assert err.splitlines() == [
        "aetherstream: config error: contract.ts_field: must be a dotted field path (e.g. "
        "payload.device) with no empty segment and at most 32 segments, got '' (from env "
        "AETHERSTREAM_CONTRACT_TS_FIELD)"
    ]
    assert seconds < FAST_S
    assert not (tmp_path / "local").exists()


def test_local_up_checks_its_own_shorter_failover_before_starting(tmp_path: Path) -> None:
    """6 s passes the default 10 s failover, not the 5 s one `local up` runs with."""
    code, err, seconds = cli(["local", "up", "--run-dir", str(tmp_path / "local")],
                             {"AETHERSTREAM_REDSHIFT_STATEMENT_TIMEOUT_MS": "6000"}, tmp_path)
    assert code == 2
    assert err.splitlines() == [
        "aetherstream: config error: redshift.statement_timeout_ms: must be below "
        "kcl.failover_time_ms (compared in ms); got redshift.statement_timeout_ms=6000 (from env "
        "AETHERSTREAM_REDSHIFT_STATEMENT_TIMEOUT_MS), kcl.failover_time_ms=5000 (from local up "
        "(consumer/local/stack.py))"
    ]
    assert seconds < FAST_S
    assert not (tmp_path / "local").exists()  # no emulator, no log file


def test_shutdown_grace_may_exceed_the_failover_time() -> None:
    """Not a rule: the ECS template runs a 60 s grace with the default 10 s failover."""
    s = load_settings(None, env={"AETHERSTREAM_KCL_SHUTDOWN_GRACE_MS": "60000"})
    assert (s.kcl.shutdown_grace_ms, s.kcl.failover_time_ms) == (60000, 10000)


def test_window_rules_wait_until_windows_are_enabled() -> None:
    s = load_settings(None, env={"AETHERSTREAM_WINDOWS_ENABLED": "false",
                                 "AETHERSTREAM_WINDOWS_SIZE_MS": "0"})
    assert (s.windows.enabled, s.windows.size_ms) == (False, 0)
    with pytest.raises(ConfigError, match=r"^windows\.size_ms: tumbling windows need"):
        load_settings(None, env={"AETHERSTREAM_WINDOWS_SIZE_MS": "0"})


def test_the_compose_file_settings_pass() -> None:
    import yaml

    compose = yaml.safe_load((ROOT / "docker/compose.yml").read_text())
    known = set(to_env(load_settings(None, env={})))
    envs = [{k: str(v) for k, v in (svc.get("environment") or {}).items() if k in known}
            for svc in compose["services"].values()]
    envs = [e for e in envs if e]
    assert envs, "no service of docker/compose.yml sets a setting"
    for env in envs:
        loaded = to_env(load_settings(None, env=env))
        assert {k: loaded[k] for k in env} == env
