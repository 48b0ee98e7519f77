"""The record processor's cyclic garbage collection: off during batches, run between them.

CPython's automatic collector runs whenever allocations outnumber deallocations by 700, and
each of its full passes walks every tracked object: the windows' state, the sink buffers and
the start-up heap (about 70k objects once the modules and the S3 and DynamoDB clients are
loaded). A processor allocates thousands of tracked objects per batch, so those passes cost
5-15% of its CPU (A/B pairs of `aetherstream bench processor --configs s3-windows`).
Almost nothing it makes forms a cycle, so here
the start-up heap is frozen out of collection, automatic collection is off, and a full
collection runs between two protocol messages at most every `interval_s`: cyclic garbage
(exception tracebacks, some client objects) lives at most that long.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

INTERVAL_S = 10.0


class PeriodicCollector:
    def __init__(self, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self._clock = interval_s, clock
        self._last = clock()
        self.collections = 0

    def take_over(self) -> None:
        """After start-up: freeze what exists, switch automatic collection off."""
        gc.collect()
        gc.freeze()
        gc.disable()
        self._last = self._clock()

    def between_messages(self) -> None:
        now = self._clock()
        if now - self._last >= self.interval_s:
            gc.collect()
            self._last, self.collections = now, self.collections + 1
