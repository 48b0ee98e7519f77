"""The archive a daemon JVM writes at exit is one the next JVM maps: the real java binary and
the real KCL jars, the MultiLangDaemon's main class. `-Xshare:on` makes the JVM refuse to
start unless it maps the archive, so the second start checks the file, its class path and
its JVM build. The main class is run without a properties file, so it loads its classes and
exits with an error at once (no emulators needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from consumer.kcl.class_archive import ClassArchive
from consumer.kcl.daemon import MAIN_CLASS, find_java, jars_dir

pytestmark = pytest.mark.integration


def run_daemon_main(options: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([find_java(), *options, "-cp", f"{jars_dir()}/*", MAIN_CLASS],
                          capture_output=True, text=True, timeout=120)


def test_the_archive_written_at_exit_is_mapped_by_the_next_start(tmp_path: Path) -> None:
    first = ClassArchive.at(tmp_path / "kcl.jsa")
    written = run_daemon_main(first.jvm_options())
    assert "Properties file missing" in written.stdout + written.stderr  # the daemon's main ran
    assert "[cds]" not in written.stdout + written.stderr  # quiet while it writes
    first.keep(written.returncode)
    assert first.path.stat().st_size > 1 << 20

    second = ClassArchive.at(tmp_path / "kcl.jsa")
    options = second.jvm_options()
    assert options[0] == f"-XX:SharedArchiveFile={first.path}"
    mapped = run_daemon_main(["-Xshare:on", *options])
    assert "Properties file missing" in mapped.stdout + mapped.stderr, mapped.stdout + mapped.stderr
    assert "shared archive" not in (mapped.stdout + mapped.stderr).lower()


def test_a_jvm_refuses_an_archive_made_for_another_class_path(tmp_path: Path) -> None:
    # The check the test above relies on: -Xshare:on does fail on an archive it cannot use.
    archive = ClassArchive.at(tmp_path / "kcl.jsa")
    archive.keep(run_daemon_main(archive.jvm_options()).returncode)
    other = subprocess.run([find_java(), "-Xshare:on", f"-XX:SharedArchiveFile={archive.path}",
                            "-cp", str(tmp_path), "-version"],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode != 0 and "shared archive" in other.stdout + other.stderr
