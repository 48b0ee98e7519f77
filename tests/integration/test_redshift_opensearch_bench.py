"""Smoke test of `aetherstream bench sinks` with tiny sizes (not a timed test).

Stand-ins: the benchmark starts its own PostgreSQL (pgserver, for Redshift) and
osmem-server (for OpenSearch), exactly as a developer's run does; the numbers are not
checked, only that both comparisons ran and printed their ratio lines.
"""

from __future__ import annotations

import re

import pytest

from consumer.bench.sinks import main

pytestmark = pytest.mark.integration


def test_bench_prints_ratio_lines(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--rows", "300", "--docs", "30", "--pg-batch", "100", "--os-batch", "10"]
    assert main([*argv, "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^ratio redshift staged/row-inserts: \d+\.\dx", out, re.M), out
    assert re.search(r"^ratio opensearch bulk/single: \d+\.\dx", out, re.M), out
