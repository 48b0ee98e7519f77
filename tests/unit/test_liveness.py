"""LagLiveness: the lag gauge rises while a callback blocks, and only then. A real
prometheus Gauge in a private registry; the clock is injected for the arithmetic, real time
and the real thread for the last test."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge

from consumer.kcl.liveness import LagLiveness, lag_estimate_ms


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauge() -> tuple[Gauge, CollectorRegistry]:
    registry = CollectorRegistry()
    return Gauge("lag_ms", "lag", registry=registry), registry


def value(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("lag_ms")


def test_estimate_adds_the_time_since_the_report() -> None:
    assert lag_estimate_ms(5000, 10.0, 12.5) == 7500
    assert lag_estimate_ms(5000, 10.0, 9.0) == 5000  # a clock never runs backwards here


def test_only_a_busy_callback_raises_the_gauge() -> None:
    g, registry = gauge()
    clock = Clock()
    live = LagLiveness(g, clock=clock)
    live.batch(2000)
    clock.now += 3
    assert live.raise_if_busy() is None and value(registry) == 2000  # idle: KCL's value
    with live.busy():
        assert live.raise_if_busy() == 5000 and value(registry) == 5000
        clock.now += 1
        with live.busy():  # nested (a commit inside a busy callback): still busy
            assert live.raise_if_busy() == 6000
        assert live.raise_if_busy() == 6000
    clock.now += 10
    assert live.raise_if_busy() is None and value(registry) == 6000
    live.batch(100)  # the next batch's value wins at once
    assert value(registry) == 100


def test_the_thread_raises_the_gauge_while_a_callback_blocks() -> None:
    g, registry = gauge()
    live = LagLiveness(g, interval_s=0.05).start()
    try:
        live.batch(1000)
        release = threading.Event()
        seen: list[float] = []

        def blocked() -> None:
            with live.busy():
                release.wait(5)

        worker = threading.Thread(target=blocked)
        worker.start()
        for _ in range(10):
            time.sleep(0.06)
            seen.append(value(registry) or 0.0)
        release.set()
        worker.join()
        assert seen == sorted(seen) and seen[0] >= 1000
        assert seen[-1] >= 1000 + 500  # 0.6 s blocked
        time.sleep(0.2)
        settled = value(registry)
        time.sleep(0.2)
        assert value(registry) == settled  # no longer busy: the gauge stands still
    finally:
        live.stop()


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LagLiveness(gauge()[0], interval_s=0)
