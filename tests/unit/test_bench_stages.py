"""consumer/bench/stages.py: every stage it times exists, the timers count what they wrap,
and the bench's stage table reads the report as written."""

from __future__ import annotations

import sys
import types
from itertools import count
from pathlib import Path

import pytest

from consumer.bench import stages
from consumer.bench.kcl_driver import RunResult
from consumer.bench.processor import stage_rows
from consumer.records.model import Position


@pytest.mark.parametrize(("label", "module", "attribute"), stages.STAGES + stages.SINK_STAGES)
def test_every_stage_names_a_function_that_exists(label: str, module: str,
                                                  attribute: str) -> None:
    owner, name = stages.resolve(module, attribute)
    assert callable(getattr(owner, name)), label


def test_a_renamed_stage_fails_loudly() -> None:
    with pytest.raises(AttributeError):
        stages.resolve("consumer.pipeline", "ShardPipeline.no_such_stage")


def _fake_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    mod = types.ModuleType("fake_stage_module")

    class Work:
        def step(self, n: int) -> int:
            return n * 2

    mod.Work = Work  # type: ignore[attr-defined]
    mod.helper = lambda x: x + 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_stage_module", mod)
    return mod


def test_timers_count_calls_and_the_clock_time_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _fake_module(monkeypatch)
    ticks = count()
    clock = stages.StageClock(clock=lambda: float(next(ticks)))  # each reading 1 s later
    clock.install((("step", "fake_stage_module", "Work.step"),
                   ("helper", "fake_stage_module", "helper")))
    assert mod.Work().step(3) == 6 and mod.Work().step(4) == 8
    assert mod.helper(1) == 2
    assert clock.calls == {"step": 2, "helper": 1}
    assert clock.seconds == {"step": 2.0, "helper": 1.0}  # one tick between start and end


def test_loaded_only_skips_modules_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch)
    clock = stages.StageClock()
    clock.install((("never", "fake_never_imported_module", "f"),
                   ("helper", "fake_stage_module", "helper")), loaded_only=True)
    assert "fake_never_imported_module" not in sys.modules
    assert list(clock.calls) == ["helper"]


def test_stage_table_shares_and_per_record_figures() -> None:
    run = RunResult("ours", 200_000, 2.5, 0.5, 2.0, 0.0, Position(1, 0), Position(1, 0), 4, 0,
                    0, 0, Path("log"))
    report = {"process_cpu_s": 2.0, "startup_cpu_s": 0.4,
              "stages": {"ingest": {"cpu_s": 0.6, "calls": 200},
                         "  decode + windows": {"cpu_s": 0.5, "calls": 200},
                         "commit (at each flush and at shutdown)": {"cpu_s": 0.8, "calls": 4}}}
    assert stage_rows(run, report) == [
        ["processor process (the host's child)", "2.000", "10.00", "100.0%", ""],
        ["start-up: interpreter, imports, clients", "0.400", "2.00", "20.0%", ""],
        ["ingest", "0.600", "3.00", "30.0%", "200"],
        ["  decode + windows", "0.500", "2.50", "25.0%", "200"],
        ["commit (at each flush and at shutdown)", "0.800", "4.00", "40.0%", "4"],
        ["rest: callbacks' own work, metrics, shutdown", "0.200", "1.00", "10.0%", ""],
        ["shard host (the relay, its start-up included)", "0.500", "2.50", "", ""],
    ]


def test_the_first_timed_call_ends_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _fake_module(monkeypatch)
    readings = iter([7.0, 8.0, 9.0, 10.0])
    clock = stages.StageClock(clock=lambda: next(readings))
    clock.install((("helper", "fake_stage_module", "helper"),))
    mod.helper(1)
    mod.helper(2)
    assert clock.first_call_cpu_s == 7.0 and clock.seconds == {"helper": 2.0}
