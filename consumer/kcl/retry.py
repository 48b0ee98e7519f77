"""Retry a shard's sink writes until they succeed or the lease is lost.

While a sink is down nothing is dropped and nothing is checkpointed past it: the write
blocks here (and with it process_records, which is how KCL fetching slows down). The policy
(full-jitter backoff, a circuit breaker per sink) is consumer/sinks/retry.py; this binds it
to the shard's stop signal, metrics and logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from consumer.metrics import registry as m
from consumer.sinks.retry import Retrier, RetryEvent, StopRetrying

log = logging.getLogger(__name__)
T = TypeVar("T")


def _report(event: RetryEvent) -> None:
    m.SINK_RETRIES.labels(event.sink).inc()
    log.warning(
        "sink write failed; retrying",
        extra={
            "sink": event.sink,
            "attempt": event.attempt,
            "delay_ms": round(event.delay_ms),
            "breaker": str(event.breaker),
            "error": f"{type(event.error).__name__}: {event.error}",
        },
    )


class RetryUntilStopped:
    def __init__(self) -> None:
        self._stop = threading.Event()
        self._retriers: dict[str, Retrier] = {}

    def stop(self) -> None:
        self._stop.set()

    def __call__(self, sink: str, write: Callable[[], T]) -> T:
        retrier = self._retriers.get(sink)
        if retrier is None:
            retrier = Retrier(
                sink, should_stop=self._stop.is_set, sleep=self._stop.wait, on_retry=_report
            )
            self._retriers[sink] = retrier
        return retrier.call(write)


__all__ = ["RetryUntilStopped", "StopRetrying"]
