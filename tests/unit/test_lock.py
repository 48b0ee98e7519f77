"""requirements.lock (the image's hashed lock) stays in step with pyproject.toml.

The lock is made by `make lock` (uv pip compile --generate-hashes). These tests read it as
pip does with --require-hashes and check, against pyproject.toml and the installed
distributions' own metadata (importlib.metadata of this venv), that it holds exactly what
the image needs: the runtime closure of pyproject's dependencies plus the build tools of
docker/build-requirements.in, each pinned and hashed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
BUILD_IN = ROOT / "docker/build-requirements.in"
PYPROJECT_VIA = "aetherstream (pyproject.toml)"
BUILD_VIA = "-r docker/build-requirements.in"
# The image: Linux x86_64, CPython 3.11, no extras.
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.14",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "os_name": "posix", "implementation_name": "cpython", "extra": ""}


@dataclass(frozen=True)
class Entry:
    version: str
    hashes: tuple[str, ...]
    via: tuple[str, ...]


def parse_lock(text: str) -> dict[str, Entry]:
    """name -> entry, from pip's requirements format with uv's `# via` comments."""
    entries: dict[str, Entry] = {}
    # A block starts at each unindented pin; the header's comment lines match no pin.
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9][\w.-]*)==([^\s\\;]+)", block)
        if head is None:
            continue
        via_text = block.split("# via", 1)[1] if "# via" in block else ""
        via = tuple(v.strip() for v in re.sub(r"#", "", via_text).splitlines() if v.strip())
        name = canonicalize_name(head.group(1))
        assert name not in entries, f"{name} pinned twice"
        entries[name] = Entry(head.group(2), tuple(re.findall(r"--hash=sha256:(\S+)", block)),
                              via)
    return entries


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        req = Requirement(line)
        spec = str(req.specifier)
        assert spec.startswith("==") and "," not in spec, f"not pinned exactly: {line}"
        out[canonicalize_name(req.name)] = spec[2:]
    return out


def runtime_pins() -> dict[str, str]:
    return _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


def build_pins() -> dict[str, str]:
    lines = [ln.strip() for ln in BUILD_IN.read_text().splitlines()]
    return _pins([ln for ln in lines if ln and not ln.startswith("#")])


def runtime_closure(roots: list[str]) -> dict[str, str]:
    """name -> installed version of every distribution the roots need on the image."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed in this venv: reinstall it (make)")
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(TARGET):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="module")
def lock() -> dict[str, Entry]:
    return parse_lock(LOCK.read_text())


def test_parse_lock_reads_pins_hashes_and_via() -> None:
    text = ("# header\n#    make lock\n"
            "a-b==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via\n    #   c\n    #   d\n"
            "c==2 \\\n    --hash=sha256:" + "1" * 64 + " \\\n    --hash=sha256:" + "2" * 64 +
            "\n    # via aetherstream (pyproject.toml)\n")
    assert parse_lock(text) == {
        "a-b": Entry("1.0", ("0" * 64,), ("c", "d")),
        "c": Entry("2", ("1" * 64, "2" * 64), (PYPROJECT_VIA,)),
    }


def test_every_pin_of_pyproject_and_build_input_is_locked_at_its_version(
    lock: dict[str, Entry],
) -> None:
    for pins, via in ((runtime_pins(), PYPROJECT_VIA), (build_pins(), BUILD_VIA)):
        for name, version in pins.items():
            assert name in lock, f"{name} missing from requirements.lock: run make lock"
            assert lock[name].version == version, f"{name}: run make lock"
            assert via in lock[name].via, name


def test_every_lock_entry_has_a_sha256_hash(lock: dict[str, Entry]) -> None:
    assert lock
    for name, entry in lock.items():
        assert entry.hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in entry.hashes), name


def test_lock_is_exactly_the_runtime_closure_plus_the_build_tools(
    lock: dict[str, Entry],
) -> None:
    # From the distributions' own metadata, not from the lock's comments: what the image's
    # `pip install --no-deps` must hold so that nothing is missing and nothing is extra.
    # Names only: the dev venv is not installed from the lock, so a transitive dependency may
    # be a newer release there (the direct pins are compared above).
    closure = runtime_closure(list(runtime_pins()))
    assert set(lock) == set(closure) | set(build_pins())


def test_via_comments_lead_back_to_pyproject_or_the_build_input(
    lock: dict[str, Entry],
) -> None:
    roots = {PYPROJECT_VIA, BUILD_VIA}
    for name, entry in lock.items():
        assert entry.via, f"{name} has no via comment"
        assert set(entry.via) <= set(lock) | roots, name
    reached = {n for n, e in lock.items() if roots & set(e.via)}
    grew = True
    while grew:
        more = {n for n, e in lock.items() if reached & set(e.via)} - reached
        reached |= more
        grew = bool(more)
    assert reached == set(lock)


def test_lock_was_made_by_make_lock() -> None:
    head = LOCK.read_text().splitlines()[:2]
    assert head[1].strip("# ") == "make lock", head
