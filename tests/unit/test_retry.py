"""Pure tests of backoff, circuit breaker and the retry loop (fake clock, no sleeping)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.sinks.retry import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    Retrier,
    RetryEvent,
    StopRetrying,
)


def _state(br: CircuitBreaker) -> BreakerState:
    """Read the state through a call, so mypy does not narrow a property across calls."""
    return br.state


class FakeClock:
    def __init__(self) -> None:
        self.now_ms = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now_ms

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ms += seconds * 1000.0


@settings(max_examples=300)
@given(
    base=st.floats(1, 1_000),
    factor=st.floats(1, 100),
    mult=st.floats(1, 4),
    attempt=st.integers(0, 10_000),
    r=st.floats(0, 1, exclude_max=True),
)
def test_full_jitter_bounds(
    base: float, factor: float, mult: float, attempt: int, r: float
) -> None:
    b = Backoff(base_ms=base, cap_ms=base * factor, multiplier=mult)
    ceiling = b.ceiling_ms(attempt)
    assert base <= ceiling <= b.cap_ms
    assert b.ceiling_ms(attempt + 1) >= ceiling  # never shrinks
    assert 0 <= b.delay_ms(attempt, lambda: r) <= ceiling


def test_backoff_grows_exponentially_then_caps() -> None:
    b = Backoff(base_ms=100, cap_ms=1_000, multiplier=2)
    assert [b.ceiling_ms(a) for a in range(6)] == [100, 200, 400, 800, 1000, 1000]
    assert b.delay_ms(3, lambda: 0.5) == 400


def test_breaker_cycle() -> None:
    clock = FakeClock()
    br = CircuitBreaker(failure_threshold=2, reset_timeout_ms=1_000, clock=clock)
    assert _state(br) is BreakerState.CLOSED and br.allow_request()
    br.record_failure()
    assert _state(br) is BreakerState.CLOSED
    br.record_failure()
    assert _state(br) is BreakerState.OPEN and not br.allow_request()
    assert br.wait_ms() == 1_000
    clock.now_ms = 999
    assert not br.allow_request()
    clock.now_ms = 1_000
    assert _state(br) is BreakerState.HALF_OPEN
    assert br.allow_request()  # the one trial
    assert not br.allow_request()  # no second trial concurrently
    br.record_failure()  # trial failed: open again, timeout restarts
    assert _state(br) is BreakerState.OPEN and br.wait_ms() == 1_000
    clock.now_ms = 2_000
    assert br.allow_request()
    br.record_success()
    assert _state(br) is BreakerState.CLOSED and br.consecutive_failures == 0


@settings(max_examples=200)
@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5))
def test_breaker_opens_only_after_threshold_consecutive_failures(
    outcomes: list[bool], threshold: int
) -> None:
    clock = FakeClock()
    br = CircuitBreaker(failure_threshold=threshold, reset_timeout_ms=10**12, clock=clock)
    run = 0
    for ok in outcomes:
        if _state(br) is BreakerState.OPEN:
            break
        if ok:
            br.record_success()
            run = 0
        else:
            br.record_failure()
            run += 1
        assert (_state(br) is BreakerState.OPEN) == (run >= threshold)


def test_retrier_retries_through_an_outage_without_dropping() -> None:
    clock = FakeClock()
    events: list[RetryEvent] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] <= 12:
            raise ConnectionError("down")
        return "ok"

    r = Retrier(
        "redshift",
        Backoff(base_ms=10, cap_ms=100),
        CircuitBreaker(failure_threshold=3, reset_timeout_ms=500, clock=clock),
        retryable=lambda e: isinstance(e, ConnectionError),
        sleep=clock.sleep,
        rand=lambda: 0.5,
        on_retry=events.append,
    )
    assert r.call(flaky) == "ok"
    assert calls["n"] == 13
    assert r.total_retries == 12 and r.last_error == "ConnectionError: down"
    assert r.breaker.state is BreakerState.CLOSED and r.breaker.consecutive_failures == 0
    assert len(events) == 12
    assert any(e.breaker is BreakerState.OPEN for e in events)
    assert _state(r.breaker) is BreakerState.CLOSED
    # While open, the loop waited the breaker out rather than calling the sink.
    assert clock.now_ms >= 500 * 3


def test_retrier_stops_when_told() -> None:
    clock = FakeClock()
    stop = {"flag": False}

    def failing() -> None:
        stop["flag"] = True  # e.g. the lease was lost meanwhile
        raise TimeoutError("slow")

    r = Retrier("os", retryable=lambda e: isinstance(e, TimeoutError),
                should_stop=lambda: stop["flag"], sleep=clock.sleep, rand=lambda: 0.0)
    with pytest.raises(StopRetrying):
        r.call(failing)


def test_bounded_attempts_raise_the_last_error() -> None:
    calls = {"n": 0}

    def down() -> None:
        calls["n"] += 1
        raise ConnectionError(f"down {calls['n']}")

    r = Retrier("ckpt", retryable=lambda e: isinstance(e, ConnectionError), max_attempts=3,
                sleep=lambda _: None)
    with pytest.raises(ConnectionError, match="down 3"):
        r.call(down)
    assert calls["n"] == 3


def test_non_retryable_error_propagates_and_frees_breaker() -> None:
    clock = FakeClock()
    br = CircuitBreaker(failure_threshold=1, reset_timeout_ms=0, clock=clock)
    br.record_failure()
    r = Retrier("pg", breaker=br, retryable=lambda e: not isinstance(e, ValueError))

    def bad() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        r.call(bad)
    assert _state(br) is BreakerState.CLOSED
