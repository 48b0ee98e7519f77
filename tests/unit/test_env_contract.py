"""Every AETHERSTREAM_* variable the deployment files set is a setting the service reads.

A misspelt variable in the ECS template or compose file would otherwise be ignored silently
and the service would run on a default.
"""

import re
from pathlib import Path

import pytest

from consumer.config import Settings, to_env

ROOT = Path(__file__).resolve().parents[2]
FILES = ["deploy/ecs/template.yaml", "docker/compose.yml", "Dockerfile"]
# Read by tooling rather than by the settings object.
TOOLING = {"AETHERSTREAM_CONFIG", "AETHERSTREAM_CACHE", "AETHERSTREAM_KCL_LOG_LEVEL",
           "AETHERSTREAM_POSTGRES_DSN", "AETHERSTREAM_REQUIRE_LINTERS"}


@pytest.mark.parametrize("name", FILES)
def test_deployment_variables_are_known_settings(name: str) -> None:
    text = (ROOT / name).read_text()
    # Only assignments: "KEY: value", "KEY=value" or "Name: KEY", not prose like REDSHIFT_*.
    used = set(re.findall(r"\b(AETHERSTREAM_[A-Z0-9_]*[A-Z0-9])\b(?!\*)", text))
    known = set(to_env(Settings())) | TOOLING
    assert used, f"{name} sets no AETHERSTREAM_ variable"
    assert used <= known, sorted(used - known)
