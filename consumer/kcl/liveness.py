"""The lag gauge keeps moving while a callback blocks (a sink down, a flush waiting on it).

KCL reports millisBehindLatest with each batch, so the gauge set from it stands still while
process_records blocks, and the lag alarm would never fire during the outage it is there for.
While a callback is busy, a background thread raises the gauge to the last reported value
plus the time since that batch arrived: KCL fetches nothing until the callback returns, so the
shard falls behind by at least that much if records keep arriving (an upper bound for a stream
that has gone quiet). The thread never touches the heartbeat: a stalled processor must look
stalled to /readyz.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol


class Settable(Protocol):
    def set(self, value: float) -> None: ...


def lag_estimate_ms(reported_ms: float, reported_at_s: float, now_s: float) -> float:
    """The lag as of now: the last reported lag plus the time since it was reported."""
    return reported_ms + max(0.0, now_s - reported_at_s) * 1000.0


class LagLiveness:
    """Owns the shard's lag gauge: `batch` sets it from KCL, `busy` marks a blocking callback
    during which the thread (started by `start`) raises it every `interval_s`."""

    def __init__(self, gauge: Settable, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval must be positive, got {interval_s}")
        self._gauge = gauge
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()  # a raise never lands after a newer batch's value
        self._reported_ms = 0.0
        self._reported_at_s = clock()
        self._busy = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def batch(self, millis_behind_latest: float) -> None:
        """A batch arrived with KCL's lag: the gauge shows it, and estimates start from it."""
        with self._lock:
            self._reported_ms = float(millis_behind_latest)
            self._reported_at_s = self._clock()
            self._gauge.set(self._reported_ms)

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def raise_if_busy(self) -> float | None:
        """One tick of the thread: the estimate it set, or None when nothing blocks."""
        with self._lock:
            if not self._busy:
                return None
            estimate = lag_estimate_ms(self._reported_ms, self._reported_at_s, self._clock())
            self._gauge.set(estimate)
            return estimate

    def start(self) -> LagLiveness:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lag-liveness", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            self.raise_if_busy()
