"""Resolving a plug-in, `module:function` (an importable module) or `file.py:function` (a
file, relative to the settings file), to its callable. The shell's part: it imports code."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    pass


def load_plugin(target: str, base_dir: Path) -> Any:
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"must be 'module:function' or 'file.py:function', got {target!r}")
    try:
        module = (_from_file(base_dir / module_name) if module_name.endswith(".py")
                  else importlib.import_module(module_name))
    except PluginError:
        raise
    except Exception as exc:  # the plug-in's import errors, whatever they are
        raise PluginError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise PluginError(f"{module_name!r} has no callable {attr!r}")
    return fn


def _from_file(path: Path) -> Any:
    if not path.is_file():
        raise PluginError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(f"aetherstream_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
