"""The daemon JVM's class-data archive (CDS): its classes mapped from one file at start-up.

The MultiLangDaemon loads thousands of classes (KCL, the AWS SDK, Netty) from its jars on
every start, about a second of the 2-3 s before it holds its leases here. One run writes a
dynamic CDS archive of them at exit (`-XX:ArchiveClassesAtExit`); later runs map it
(`-XX:SharedArchiveFile`). The JVM checks an archive against its own build and the class
path, and runs without one that does not match, so a stale archive costs only its gain. The
default path is keyed by the java binary and the jars, so a new JDK or KCL gets its own.

Only the local stack asks for one (`kcl.class_archive = "auto"`): an ECS task starts with
an empty file system, so every task would write an archive at exit and none would map it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from consumer.kcl.daemon import jars_dir

log = logging.getLogger(__name__)

# The archive's own log lines: hundreds of "skipping class" warnings while one is written.
QUIET = "-Xlog:cds=off,cds+dynamic=off"


def default_path(java: str, jars: Path) -> Path:
    """Beside the jars (so `make clean` removes it with them), keyed by what the JVM checks."""
    files = [Path(os.path.realpath(java)), *sorted(jars.glob("*.jar"))]
    key = hashlib.sha256("\n".join(map(_stamp, files)).encode()).hexdigest()[:16]
    return jars.parent / "class-archives" / f"kcl-{key}.jsa"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class ClassArchive:
    path: Path
    scratch: Path  # where this daemon writes a new archive when `path` is not there yet

    @classmethod
    def at(cls, path: Path) -> ClassArchive:
        return cls(path, path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"))

    def jvm_options(self) -> list[str]:
        """Map the archive if it is there, else write one at exit."""
        if self.path.is_file():
            return [f"-XX:SharedArchiveFile={self.path}", QUIET]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return [f"-XX:ArchiveClassesAtExit={self.scratch}", QUIET]

    def keep(self, exit_code: int | None) -> None:
        """After the daemon's exit: the archive it wrote becomes the one later starts map,
        if the JVM exited by itself (a JVM killed by a signal may have left half a file).
        A daemon that started beside another writing one leaves the first in place."""
        if not self.scratch.exists():
            return
        if exit_code is not None and exit_code >= 0 and not self.path.exists():
            os.replace(self.scratch, self.path)
            log.info("KCL daemon class archive written", extra={"path": str(self.path)})
        else:
            self.scratch.unlink()


def class_archive(setting: str, java: str) -> ClassArchive | None:
    """kcl.class_archive as an archive: "" none, "auto" keyed beside the jars, else a path."""
    if not setting:
        return None
    return ClassArchive.at(default_path(java, jars_dir()) if setting == "auto" else Path(setting))
