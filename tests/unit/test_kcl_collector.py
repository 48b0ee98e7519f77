"""The record processor's garbage collection: automatic collection off, start-up heap frozen,
a full collection between messages once the interval has passed (consumer/kcl/collector.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumer.kcl.collector import PeriodicCollector


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def cyclic_garbage() -> weakref.ref[Node]:
    return weakref.ref(Node())


def test_cycles_wait_for_the_interval_then_go() -> None:
    now = [100.0]
    collector = PeriodicCollector(interval_s=10.0, clock=lambda: now[0])
    collector.take_over()
    assert not gc.isenabled() and gc.get_freeze_count() > 0
    ref = cyclic_garbage()
    for _ in range(5_000):  # far past the automatic threshold (700)
        [[] for _ in range(10)]
    now[0] += 9.9
    collector.between_messages()
    assert ref() is not None and collector.collections == 0
    now[0] += 0.1
    collector.between_messages()
    assert ref() is None and collector.collections == 1
    collector.between_messages()  # the interval counts from the last collection
    assert collector.collections == 1
