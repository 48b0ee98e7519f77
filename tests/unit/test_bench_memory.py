"""The memory benchmark's pure parts: phases, statistics, the verdict, the feed's polls, the
budget read from the template, and the printed table."""

from __future__ import annotations

import statistics
from pathlib import Path

from cfnlint.decode import cfn_yaml
from hypothesis import given
from hypothesis import strategies as st

from consumer.bench import memory as mem

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "ecs" / "template.yaml"

samples_st = st.lists(st.builds(mem.Sample, st.floats(0, 100, allow_nan=False),
                                st.integers(1, 2**34)), max_size=60)


@given(samples_st, st.floats(0, 100), st.floats(0, 100))
def test_phase_stats_are_each_phases_peak_and_median(samples: list[mem.Sample], a: float,
                                                      b: float) -> None:
    start, end = min(a, b), max(a, b)
    got = mem.phase_stats(samples, start, end)
    expected = {
        "before": [s.rss for s in samples if s.t_s < start],
        "during": [s.rss for s in samples if start <= s.t_s < end],
        "after": [s.rss for s in samples if s.t_s >= end],
    }
    assert set(got) == {p for p, v in expected.items() if v}
    for phase, stats in got.items():
        values = expected[phase]
        assert (stats.samples, stats.peak) == (len(values), max(values))
        assert stats.median == int(statistics.median(values))
    assert sum(s.samples for s in got.values()) == len(samples)


def test_verdict_allows_twenty_percent_over_the_budget() -> None:
    budget = 256 * mem.MIB
    limit = int(budget * 1.2)
    assert mem.Verdict(limit, budget).within
    assert not mem.Verdict(limit + 1, budget).within
    assert mem.Verdict(budget // 2, budget).ratio == 0.5


def test_polls_take_a_full_batch_while_behind_and_what_arrived_otherwise() -> None:
    assert mem.arrived(2.5, 1000, 10) == 2500
    assert mem.arrived(12.0, 1000, 10) == 10_000  # arrivals stop at the feed's end
    assert mem.batch_size(mem.arrived(2.5, 1000, 10), 0, 1000) == 1000
    assert mem.batch_size(2500, 2000, 1000) == 500
    assert mem.batch_size(2500, 2500, 1000) == 0
    # As fast as the processor takes them: full batches until the feed ends, then none.
    assert mem.batch_size(mem.arrived(3.0, 0, 10), 123_456, 1000) == 1000
    assert mem.batch_size(mem.arrived(10.0, 0, 10), 123_456, 1000) == 0


def test_budget_is_the_templates_processor_memory_default() -> None:
    params = cfn_yaml.load(str(TEMPLATE))["Parameters"]
    assert mem.template_default_mib(TEMPLATE.read_text()) == int(
        params["ProcessorMemoryMiB"]["Default"])
    assert mem.template_default_mib("Parameters:\n  Other:\n    Default: 3\n") is None


def test_report_names_each_phase_and_the_verdict() -> None:
    samples = [mem.Sample(0.5, 80 * mem.MIB), mem.Sample(5.0, 100 * mem.MIB),
               mem.Sample(9.0, 90 * mem.MIB)]
    stats = mem.phase_stats(samples, 4.0, 8.0)
    bounds = {"before": (0.0, 4.0), "during": (4.0, 8.0), "after": (8.0, 10.0)}
    lines = mem.report_lines(stats, bounds, {"before": 8000, "during": 0, "after": 4000},
                             mem.Verdict(100 * mem.MIB, 256 * mem.MIB))
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines[2:-1]}
    assert rows["during"][3:7] == ["100.0", "100.0", "0.39", "0"]
    assert rows["before"][-1] == "8,000"
    assert lines[-1].endswith("= 0.39; budget + 20% = 307.2 MiB: within")
    over = mem.report_lines(stats, bounds, {}, mem.Verdict(400 * mem.MIB, 256 * mem.MIB))
    assert over[-1].endswith(": OVER")
