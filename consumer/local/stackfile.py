"""The running stack's file in its run dir, and the `export` lines `aetherstream local env` prints.

`local up` writes <run dir>/stack.json once the emulators are ready and removes it when they
stop, so a worker started in another terminal (`eval "$(aetherstream local env)"` then
`aetherstream run --run-dir run/worker-1`) reaches the same stream, tables and sinks.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from consumer.config import Settings, to_env

FILE_NAME = "stack.json"
# Set per worker, never shared: each worker has its own run dir, metrics files and identity.
_PER_WORKER = {"AETHERSTREAM_RUN_DIR", "AETHERSTREAM_METRICS_MULTIPROC_DIR",
               "AETHERSTREAM_KCL_WORKER_ID"}
# Always exported, even at their defaults: they name what the stack created.
_IDENTITY = {"AETHERSTREAM_STREAM_NAME", "AETHERSTREAM_STREAM_APP_NAME", "AETHERSTREAM_S3_BUCKET"}


class NoRunningStack(RuntimeError):
    """No live `local up` owns this run dir."""


def settings_exports(settings: Settings) -> dict[str, str]:
    """The AETHERSTREAM_* settings a worker needs: what the stack chose (sinks, endpoints,
    local KCL timings, a free metrics port), not every default."""
    defaults = to_env(Settings())
    return {k: v for k, v in to_env(settings).items()
            if k not in _PER_WORKER and (k in _IDENTITY or defaults.get(k) != v)}


def write(run_dir: Path, info: dict[str, Any], exports: dict[str, str]) -> Path:
    path = run_dir / FILE_NAME
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info, "env": exports}, indent=2) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return path


def remove(run_dir: Path) -> None:
    path = run_dir / FILE_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():  # only our own file
            path.unlink()
    except (OSError, ValueError):
        pass


def read(run_dir: Path) -> dict[str, Any]:
    """The live stack's file; NoRunningStack if there is none or its owner is gone."""
    path = run_dir / FILE_NAME
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoRunningStack(f"no local stack in {run_dir} (no {FILE_NAME}); "
                             f"start one with `aetherstream local up`") from None
    except (OSError, ValueError) as exc:
        raise NoRunningStack(f"{path}: unreadable: {exc}") from exc
    if not _alive(int(data.get("pid", 0))):
        raise NoRunningStack(f"{path} is stale: its `local up` (pid {data.get('pid')}) is gone")
    return data


def export_lines(exports: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(exports.items()))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
