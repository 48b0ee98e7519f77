"""`aetherstream transform test` end to end in-process: the committed example settings and
sample (the README shows this output), and a raw archive object written by the real archive
line writer (consumer/sinks/layout.py)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from consumer.cli import main
from consumer.records.model import Event, Position, RawRecord
from consumer.sinks.layout import Provenance, archive_line

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/transform"


def lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert main(["transform", "test", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_example_sample(capsys: pytest.CaptureFixture[str]) -> None:
    out = lines(capsys, "--config", str(EXAMPLE / "settings.toml"),
                "--input", str(EXAMPLE / "sample.ndjson"))
    records, summary = out[:-1], out[-1]
    assert [(r["line"], r["outcome"]) for r in records] == [
        (1, "kept"), (2, "kept"), (3, "filtered"), (4, "kept"), (5, "rejected"),
        (6, "rejected"), (7, "rejected")]
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
    assert [(r["stage"], r["reason"]) for r in records[4:]] == [
        ("transform", "temp-number:convert_error"), ("transform", "to-celsius:missing_field"),
        ("decode", "not_an_object")]
    assert summary["type"] == "summary"
    assert (summary["input"], summary["kept"], summary["rejected"]) == (7, 3, 3)
    assert summary["filtered"] == {"plausible": 1}


def test_raw_archive_object_keeps_its_provenance(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    prov = Provenance("events", "shardId-000000000001")
    payloads = [b'{"dev": "dev-2", "temp_f": 50}', b'{"dev": "dev-1", "temp_f": -400}']
    body = b"".join(archive_line(prov, Event(("d", "m"), 1, 1.0,
                                             RawRecord(p, f"pk{i}", Position(10**30 + i, i), 5)))
                    for i, p in enumerate(payloads))
    obj = tmp_path / "00000_00001.ndjson.gz"
    obj.write_bytes(gzip.compress(body))
    out = lines(capsys, "--config", str(EXAMPLE / "settings.toml"), "--input", str(obj))
    assert [(r["position"], r["partition_key"], r["outcome"]) for r in out[:-1]] == [
        (f"{10**30}/0", "pk0", "kept"), (f"{10**30 + 1}/1", "pk1", "filtered")]
    assert out[0]["before"] == {"dev": "dev-2", "temp_f": 50}
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
