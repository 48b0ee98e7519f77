"""The daemon's class-data archive: which JVM options a start gets, which file a stop keeps,
and what its default path is keyed by. The JVM itself reading the archive is
tests/integration/test_class_archive_jvm.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consumer.kcl.class_archive import QUIET, ClassArchive, class_archive, default_path
from consumer.kcl.daemon import jars_dir


def test_a_first_start_writes_the_archive_at_exit_to_its_own_scratch_file(tmp_path: Path) -> None:
    a, b = (ClassArchive.at(tmp_path / "cds" / "kcl.jsa") for _ in range(2))
    assert a.jvm_options() == [f"-XX:ArchiveClassesAtExit={a.scratch}", QUIET]
    assert (tmp_path / "cds").is_dir()  # the JVM does not make the directory
    assert a.scratch != b.scratch and a.scratch.parent == a.path.parent  # same file system


def test_a_later_start_maps_the_archive(tmp_path: Path) -> None:
    archive = ClassArchive.at(tmp_path / "kcl.jsa")
    archive.path.write_bytes(b"archive")
    assert archive.jvm_options() == [f"-XX:SharedArchiveFile={archive.path}", QUIET]


@pytest.mark.parametrize("exit_code", [0, 1, 143])  # 143: the JVM's own exit after SIGTERM
def test_a_jvm_that_exited_by_itself_leaves_the_archive_it_wrote(tmp_path: Path,
                                                                  exit_code: int) -> None:
    archive = ClassArchive.at(tmp_path / "kcl.jsa")
    archive.scratch.write_bytes(b"written at exit")
    archive.keep(exit_code)
    assert archive.path.read_bytes() == b"written at exit"
    assert not archive.scratch.exists()


@pytest.mark.parametrize("exit_code", [-9, None])  # SIGKILL (maybe mid-write); never started
def test_a_killed_jvm_leaves_no_archive(tmp_path: Path, exit_code: int | None) -> None:
    archive = ClassArchive.at(tmp_path / "kcl.jsa")
    archive.scratch.write_bytes(b"half")
    archive.keep(exit_code)
    assert not archive.path.exists() and not archive.scratch.exists()


def test_the_first_archive_kept_stays(tmp_path: Path) -> None:
    first, second = ClassArchive.at(tmp_path / "kcl.jsa"), ClassArchive.at(tmp_path / "kcl.jsa")
    first.scratch.write_bytes(b"first")
    second.scratch.write_bytes(b"second")
    first.keep(0)
    second.keep(0)
    assert first.path.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kcl.jsa"]


def test_keep_without_a_written_archive_does_nothing(tmp_path: Path) -> None:
    ClassArchive.at(tmp_path / "kcl.jsa").keep(0)
    assert list(tmp_path.iterdir()) == []


def test_the_default_path_changes_with_the_jars_and_the_java_binary(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "kcl.jar").write_bytes(b"v1")
    java = tmp_path / "java"
    java.write_bytes(b"jdk17")
    first = default_path(str(java), jars)
    assert first == default_path(str(java), jars)
    assert first.parent == tmp_path / "class-archives"
    (jars / "kcl.jar").write_bytes(b"v2 longer")
    second = default_path(str(java), jars)
    java.write_bytes(b"jdk21 build")
    third = default_path(str(java), jars)
    assert len({first, second, third}) == 3


def test_the_setting_chooses_none_the_keyed_default_or_a_path(tmp_path: Path) -> None:
    java = os.path.realpath("/proc/self/exe")  # any existing file stands for the binary here
    assert class_archive("", java) is None
    auto = class_archive("auto", java)
    assert auto is not None and auto.path == default_path(java, jars_dir())
    given = class_archive(str(tmp_path / "mine.jsa"), java)
    assert given is not None and given.path == tmp_path / "mine.jsa"
