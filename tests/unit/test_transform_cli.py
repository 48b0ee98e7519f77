"""`aetherstream transform test` end to end in-process: the committed example settings and
sample (the README shows this output), and a raw archive object written by the real archive
line writer (consumer/sinks/layout.py)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.records.model import Event, Position, RawRecord
from consumer.sinks.layout import Provenance, archive_line
from tests.support import transform_case as case

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/transform"


def lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["transform", "test", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_example_sample(capsys: pytest.CaptureFixture[str]) -> None:
    out = lines(capsys, "--config", str(EXAMPLE / "settings.toml"),
                "--input", str(EXAMPLE / "sample.ndjson"))
    records, results, summary = out[:7], out[7:-1], out[-1]
    assert [(r["line"], r["type"]) for r in records] == [
        (1, "record"), (2, "record"), (3, "filtered"), (4, "record"), (5, "quarantined"),
        (6, "quarantined"), (7, "quarantined")]
    first = records[0]
    assert first["before"] == {"dev": "dev-1", "ts": "2026-11-18T11:00:01Z", "temp_f": 98.6,
                               "debug": "x"}
    assert first["after"] == {"ts": "2026-11-18T11:00:01Z", "device_id": "dev-1",
                              "temp_c": pytest.approx(37.0), "site": "plant-a", "band": "hot",
                              "metric": "temp_c", "unit": "degC", "value": pytest.approx(37.0),
                              "_aggregations": ["per_device", "per_site_hot"]}
    assert records[1]["after"]["temp_c"] == pytest.approx(5.0)  # "41" as a string, converted
    assert records[2]["filter"] == "plausible"
    assert records[3]["after"]["site"] == "unknown"  # dev-9: the lookup's default
    assert (records[0]["key"], records[0]["value"]) == (["dev-1", "temp_c"], pytest.approx(37.0))
    assert [(r["stage"], r["reason"]) for r in records[4:]] == [
        ("transform", "temp-number:convert_error"), ("transform", "to-celsius:missing_field"),
        ("decode", "not_an_object")]
    # one 60 s window (the default [windows]), closed because the input ended
    assert [(r["type"], r["key"], r["count"], r["closed_by"]) for r in results] == [
        ("result", ["dev-1", "temp_c"], 1, "end_of_input"),
        ("result", ["dev-2", "temp_c"], 1, "end_of_input"),
        ("result", ["dev-9", "temp_c"], 1, "end_of_input")]
    assert summary["type"] == "summary"
    assert (summary["input"], summary["windowed"], summary["quarantined"], summary["late"],
            summary["filtered"]) == (7, 3, 3, 0, 1)
    assert summary["filtered_by"] == {"plausible": 1} and summary["reconciles"]


def test_raw_archive_object_keeps_its_provenance(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    prov = Provenance("events", "shardId-000000000001")
    payloads = [b'{"dev": "dev-2", "ts": 1794999601000, "temp_f": 50}',
                b'{"dev": "dev-1", "ts": 1794999602000, "temp_f": -400}']
    body = b"".join(archive_line(prov, Event(("d", "m"), 1, 1.0,
                                             RawRecord(p, f"pk{i}", Position(10**30 + i, i), 5)))
                    for i, p in enumerate(payloads))
    obj = tmp_path / "00000_00001.ndjson.gz"
    obj.write_bytes(gzip.compress(body))
    out = lines(capsys, "--config", str(EXAMPLE / "settings.toml"), "--input", str(obj))
    assert [(r["position"], r["partition_key"], r["type"]) for r in out[:2]] == [
        (f"{10**30}/0", "pk0", "record"), (f"{10**30 + 1}/1", "pk1", "filtered")]
    assert out[2]["type"] == "result" and out[2]["shard"] == "shardId-000000000001"
    assert out[0]["before"] == {"dev": "dev-2", "ts": 1794999601000, "temp_f": 50}
    assert out[0]["after"]["temp_c"] == pytest.approx(10.0)


def test_bad_settings_and_missing_input(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[transform]]\nname = "x"\nkind = "derive"\nfield = "y"\nexpr = "(1"\n')
    assert main(["transform", "test", "--config", str(bad), "--input", "nope"]) == 2
    assert "config error: transform[0] 'x': expr: not a CEL expression" in capsys.readouterr().err
    assert main(["transform", "test", "--config", str(EXAMPLE / "settings.toml"),
                 "--input", str(tmp_path / "absent.ndjson")]) == 1
    assert "absent.ndjson" in capsys.readouterr().err


def test_readme_shows_the_real_settings_and_output(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the README's command line, as typed at the top of the repo
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Transformations", 1)[1].split("\n## ", 1)[0]
    settings = (EXAMPLE / "settings.toml").read_text()
    body = settings[settings.index("[contract]"):]  # the file without its comment header
    assert body in section
    assert main(["transform", "test", "--config", "examples/transform/settings.toml",
                 "--input", "examples/transform/sample.ndjson"]) == 0
    out = capsys.readouterr().out
    assert out in section


def test_readme_shows_the_declared_aggregations_real_output(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's "Several aggregations at once" prints jq's compact form of these lines.
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Several aggregations at once", 1)[1].split("\n## ", 1)[0]
    assert main(["transform", "test", "--config", "examples/aggregations/settings.toml",
                 "--input", "examples/aggregations/sample.ndjson"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    shown = ("aggregation", "key", "window_start_ms", "count", "mean", "closed_by")
    declared = [r for r in out if r["type"] == "result" and r["aggregation"]][:7]
    summary = next(r for r in out if r["type"] == "summary")
    picked = [{k: jq_number(r[k]) for k in shown} for r in declared]
    picked.append({k: summary[k] for k in ("input", "windowed", "filtered", "quarantined",
                                           "late", "reconciles", "aggregations")})
    for obj in picked:
        compact = json.dumps(obj, separators=(",", ":"))
        assert compact in section, compact


def jq_number(v: object) -> object:
    return int(v) if isinstance(v, float) and v.is_integer() else v  # jq prints 29.0 as 29


# ------------------------------------------- the chain and the windows against an oracle


def test_results_equal_the_oracle_and_the_summary_reconciles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = case.payloads()
    want = case.oracle(data)
    outcomes = Counter(want["outcome"].values())
    assert all(outcomes[t] for t in ("record", "filtered", "quarantined", "late"))
    (tmp_path / "in.ndjson").write_bytes(b"\n".join(data) + b"\n")
    out = lines(capsys, "--config", str(case.settings_file(tmp_path)),
                "--input", str(tmp_path / "in.ndjson"), "--batch-size", "7")
    records = [r for r in out if r["type"] in ("record", "filtered", "quarantined", "late")]
    assert [(r["line"] - 1, r["type"]) for r in records] == sorted(want["outcome"].items())
    reasons = Counter(r["reason"] for r in records if r["type"] == "quarantined")
    assert set(reasons) == {"factors:lookup_miss", "invalid_json", "contract:missing_field",
                            "scaled:expr_error"}
    got = {(*r["key"], r["window_start_ms"]): r for r in out if r["type"] == "result"}
    assert got.keys() == want["results"].keys()
    for k, o in want["results"].items():
        r = got[k]
        assert (r["count"], r["min"], r["max"], r["closed_by"]) == (
            o["count"], o["min"], o["max"], o["closed_by"]), k
        assert r["sum"] == pytest.approx(o["sum"], rel=1e-12) and r["is_final"], k
    assert {r["closed_by"] for r in got.values()} == {"watermark", "end_of_input"}
    assert any(r["emissions"] > 1 for r in got.values())  # a straggler within the lateness
    summary = out[-1]
    assert summary["type"] == "summary" and summary["reconciles"]
    assert (summary["input"], summary["windowed"], summary["filtered"], summary["quarantined"],
            summary["late"]) == (len(data), outcomes["record"], outcomes["filtered"],
                                 outcomes["quarantined"], outcomes["late"])
    assert summary["input"] == sum(summary[t] for t in ("windowed", "filtered", "quarantined",
                                                        "late"))
    assert summary["windowed"] == sum(r["count"] for r in got.values())
    assert summary["watermark_ms"] == want["watermark"]


def test_batches_do_not_change_the_results(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.ndjson").write_bytes(b"\n".join(case.payloads()))
    argv = ("--config", str(case.settings_file(tmp_path)), "--input", str(tmp_path / "in.ndjson"))

    def results(batch: str) -> list[tuple[Any, ...]]:
        return [(r["result_id"], r["count"], r["sum"], r["closed_by"])
                for r in lines(capsys, *argv, "--batch-size", batch) if r["type"] == "result"]

    assert results("1") == results("500") != []


def test_inputs_it_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Archive lines of two shards (the service windows each alone), a URL that is not
    s3://, and --against-archive without windows: exit 2, with why, before any S3 call."""
    config = str(EXAMPLE / "settings.toml")
    body = b"".join(archive_line(Provenance("events", shard), Event(
        ("d", "m"), 1, 1.0, RawRecord(b'{"dev": "dev-1"}', "pk", Position(i, 0), 0)))
        for i, shard in enumerate(["shardId-1", "shardId-2"]))
    mixed = tmp_path / "mixed.ndjson"
    mixed.write_bytes(body)
    assert main(["transform", "test", "--config", config, "--input", str(mixed)]) == 2
    assert "several shards (shardId-1, shardId-2)" in capsys.readouterr().err
    sample = str(EXAMPLE / "sample.ndjson")
    assert main(["transform", "test", "--config", config, "--input", sample,
                 "--against-archive", "results/"]) == 2
    assert "not an s3://bucket/prefix URL" in capsys.readouterr().err
    off = tmp_path / "off.toml"
    off.write_text("[windows]\nenabled = false\n")
    assert main(["transform", "test", "--config", str(off), "--input", sample,
                 "--against-archive", "s3://b/results/"]) == 2
    assert "windows.enabled = false" in capsys.readouterr().err


# ------------------------------------------------- declared aggregations beside the default

AGGS_SETTINGS = """
[windows]
size_ms = 10000
out_of_orderness_ms = 0

[[transform]]
name = "band"
kind = "derive"
field = "band"
expr = "value >= 50.0 ? 'high' : 'normal'"

[[aggregation]]
name = "per_device"
group_by = ["device_id"]
[aggregation.window]
size_ms = 10000
out_of_orderness_ms = 0

[[aggregation]]
name = "per_band"
group_by = ["band"]
quantiles = true
filter = "value >= 0.0"
[aggregation.window]
kind = "sliding"
size_ms = 20000
slide_ms = 10000
out_of_orderness_ms = 0
"""
T = 1_800_000_000_000  # a multiple of 10 s


def test_every_declared_aggregation_has_its_results(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The [[aggregation]] tables run beside the default one, fed the chain's output (the
    derived band), each with its own watermark: the straggler at +3 s is late for the 10 s
    tumbling windows but fits the sliding window [0, 20 s); the negative reading is refused
    by per_band's filter only. Expected results worked out by hand."""
    (tmp_path / "s.toml").write_text(AGGS_SETTINGS)
    readings = [("d1", 1000, 10.0), ("d2", 2000, 60.0), ("d1", 11000, -5.0),
                ("d1", 12000, 70.0), ("d2", 3000, 20.0), ("d2", 25000, 30.0)]
    (tmp_path / "in.ndjson").write_text("".join(
        json.dumps({"device_id": d, "metric": "m", "ts": T + t, "value": v}) + "\n"
        for d, t, v in readings))
    out = lines(capsys, "--config", str(tmp_path / "s.toml"),
                "--input", str(tmp_path / "in.ndjson"), "--batch-size", "2")
    assert [r["type"] for r in out[:6]] == ["record"] * 4 + ["late", "record"]

    def results(agg: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        return {(tuple(r["key"]), r["window_start_ms"] - T): (
                    r["count"], r["sum"], r["min"], r["max"], r["closed_by"])
                for r in out if r["type"] == "result" and r["aggregation"] == agg}

    w, e = "watermark", "end_of_input"
    assert results("") == {
        (("d1", "m"), 0): (1, 10.0, 10.0, 10.0, w), (("d2", "m"), 0): (1, 60.0, 60.0, 60.0, w),
        (("d1", "m"), 10000): (2, 65.0, -5.0, 70.0, w),
        (("d2", "m"), 20000): (1, 30.0, 30.0, 30.0, e)}
    assert results("per_device") == {
        (("d1",), 0): (1, 10.0, 10.0, 10.0, w), (("d2",), 0): (1, 60.0, 60.0, 60.0, w),
        (("d1",), 10000): (2, 65.0, -5.0, 70.0, w), (("d2",), 20000): (1, 30.0, 30.0, 30.0, e)}
    assert results("per_band") == {
        (("normal",), -10000): (1, 10.0, 10.0, 10.0, w),
        (("high",), -10000): (1, 60.0, 60.0, 60.0, w),
        (("normal",), 0): (2, 30.0, 10.0, 20.0, w), (("high",), 0): (2, 130.0, 60.0, 70.0, w),
        (("high",), 10000): (1, 70.0, 70.0, 70.0, e),
        (("normal",), 10000): (1, 30.0, 30.0, 30.0, e),
        (("normal",), 20000): (1, 30.0, 30.0, 30.0, e)}
    band = [r for r in out if r["type"] == "result" and r["aggregation"] == "per_band"]
    assert all(r["kind"] == "sliding" and set(r["quantiles"]) == {"p50", "p90", "p99"}
               for r in band)
    normal = next(r for r in band if r["key"] == ["normal"] and r["window_start_ms"] == T)
    assert normal["quantiles"]["p50"] == pytest.approx(10.0, rel=0.01)
    assert all(r["quantiles"] == {} for r in out
               if r["type"] == "result" and r["aggregation"] != "per_band")
    summary = out[-1]
    assert (summary["input"], summary["windowed"], summary["late"], summary["results"],
            summary["reconciles"]) == (6, 5, 1, 4, True)
    assert summary["aggregations"] == {
        "per_device": {"results": 4, "late": 1, "not_read": 0, "watermark_ms": T + 25000},
        "per_band": {"results": 7, "late": 0, "not_read": 1, "watermark_ms": T + 25000}}
