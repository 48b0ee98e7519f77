"""Cyclic GC paused over a batch's pure stages.

A batch allocates many short-lived containers (key tuples, columns, field dicts); a
collection triggered in the middle of it traverses them all, and the windows' state
besides, so the stages run with GC off and it is restored afterwards (a collection then
happens at most once per batch, between batches)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused_gc() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
