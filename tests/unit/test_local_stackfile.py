"""The local stack's pure pieces: KCL lease items, the stack file and `local env`'s exports.

That KCL takes the prepared leases at once is tested against the real daemon in
tests/integration/test_local_stack.py; here, the shapes and the refusals.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from consumer.config import Settings, load_settings, with_overrides
from consumer.local import leases, stackfile

MAX_HASH = str(2**128 - 1)


def shard(shard_id: str, start: str = "0", end: str = MAX_HASH, closed: bool = False,
          parent: str | None = None) -> dict[str, object]:
    seq: dict[str, str] = {"StartingSequenceNumber": "1"}
    if closed:
        seq["EndingSequenceNumber"] = "9"
    out: dict[str, object] = {"ShardId": shard_id, "SequenceNumberRange": seq,
                              "HashKeyRange": {"StartingHashKey": start, "EndingHashKey": end}}
    if parent:
        out["ParentShardId"] = parent
    return out


def test_one_unowned_trim_horizon_lease_per_open_shard() -> None:
    items = leases.lease_items([shard("shardId-000000000000", end="41"),
                                shard("shardId-000000000001", start="42")])
    assert [i["leaseKey"] for i in items] == [{"S": "shardId-000000000000"},
                                              {"S": "shardId-000000000001"}]
    assert items[0]["startingHashKey"] == {"S": "0"} and items[0]["endingHashKey"] == {"S": "41"}
    assert items[1]["startingHashKey"] == {"S": "42"}
    for item in items:
        assert "leaseOwner" not in item  # unowned: the taker's first pass takes it
        assert item["checkpoint"] == {"S": "TRIM_HORIZON"}
        assert {item[k]["N"] for k in ("checkpointSubSequenceNumber", "leaseCounter",
                                       "ownerSwitchesSinceCheckpoint")} == {"0"}


def test_parents_are_listed_as_kcl_does() -> None:
    child = shard("shardId-000000000002", parent="shardId-000000000000")
    child["AdjacentParentShardId"] = "shardId-000000000001"
    (item,) = leases.lease_items([child])
    assert item["parentShardId"] == {"SS": ["shardId-000000000000", "shardId-000000000001"]}


def test_a_resharded_stream_is_left_to_kcl() -> None:
    with pytest.raises(leases.NotFreshStream, match="shardId-000000000000"):
        leases.lease_items([shard("shardId-000000000000", closed=True),
                            shard("shardId-000000000001", parent="shardId-000000000000")])


def test_exports_name_the_stack_and_skip_defaults_and_per_worker_settings() -> None:
    settings = with_overrides(Settings(), redshift={"enabled": True, "dsn": "postgresql://x",
                                                   "dialect": "postgres"},
                              metrics={"port": 0, "multiproc_dir": "/tmp/m"},
                              kcl={"worker_id": "w-1"})
    exports = stackfile.settings_exports(settings)
    assert exports["AETHERSTREAM_REDSHIFT_ENABLED"] == "true"
    assert exports["AETHERSTREAM_REDSHIFT_DSN"] == "postgresql://x"
    assert exports["AETHERSTREAM_METRICS_PORT"] == "0"  # each worker gets a free port
    assert exports["AETHERSTREAM_STREAM_NAME"] == Settings().stream.name  # identity, always
    for per_worker in ("AETHERSTREAM_RUN_DIR", "AETHERSTREAM_METRICS_MULTIPROC_DIR",
                       "AETHERSTREAM_KCL_WORKER_ID", "AETHERSTREAM_FLUSH_MAX_RECORDS"):
        assert per_worker not in exports
    # What a worker loads from these exports is what the stack ran with.
    loaded = load_settings(None, env=exports)
    assert loaded.redshift == settings.redshift and loaded.stream == settings.stream


def test_export_lines_survive_the_shell(tmp_path: Path) -> None:
    exports = {"AETHERSTREAM_REDSHIFT_DSN": "postgresql://u@h:1/d?x='1' $HOME", "A_B": "plain"}
    show = 'printf "%s\\n%s" "$AETHERSTREAM_REDSHIFT_DSN" "$A_B"'
    script = stackfile.export_lines(exports) + show
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n") == [exports["AETHERSTREAM_REDSHIFT_DSN"], "plain"]
    assert all(line.startswith("export ") for line in stackfile.export_lines(exports).splitlines())
    assert shlex.split(stackfile.export_lines({"K": "v w"})) == ["export", "K=v w"]


def test_stack_file_round_trip_and_removal(tmp_path: Path) -> None:
    stackfile.write(tmp_path, {"stream": "s"}, {"K": "v"})
    data = stackfile.read(tmp_path)
    assert (data["pid"], data["stream"], data["env"]) == (os.getpid(), "s", {"K": "v"})
    stackfile.remove(tmp_path)
    with pytest.raises(stackfile.NoRunningStack, match="no local stack"):
        stackfile.read(tmp_path)


def test_a_dead_owner_makes_the_file_stale(tmp_path: Path) -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    (tmp_path / stackfile.FILE_NAME).write_text(f'{{"pid": {child.stdout.strip()}, "env": {{}}}}')
    with pytest.raises(stackfile.NoRunningStack, match="stale"):
        stackfile.read(tmp_path)
    stackfile.remove(tmp_path)  # not ours: left for its owner's successor to overwrite
    assert (tmp_path / stackfile.FILE_NAME).exists()


def test_a_demo_wipes_its_state_but_never_under_a_running_stack(tmp_path: Path) -> None:
    from consumer.local.demo import RunDirBusy, fresh_run_dir

    for name in ("postgres", "worker"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "old").write_text("rows of an earlier demo")
    (tmp_path / "aetherstream.log").write_text("kept")
    stackfile.write(tmp_path, {}, {})  # a live stack (this process) owns the dir
    with pytest.raises(RunDirBusy, match=str(os.getpid())):
        fresh_run_dir(tmp_path)
    assert (tmp_path / "postgres" / "old").exists()
    stackfile.remove(tmp_path)
    fresh_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aetherstream.log"]
