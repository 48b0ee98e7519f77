"""Retry policy for sinks: exponential backoff with full jitter and a per-sink circuit breaker.

A sink that is down must not make us drop anything: `Retrier.call` retries what its
classifier (fixed at construction, consumer/sinks/errors.py by default in the shell) calls
transient, forever unless max_attempts bounds it (the breaker only spaces the attempts out),
until `should_stop()` says the shard is being given up, e.g. the lease was lost; anything
else is raised at once (fatal by default, like Flink's FatalExceptionClassifier).
Randomness, sleeping and the clock are injected so that the policy is testable without waiting.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Backoff:
    """delay(attempt) = uniform(0, min(cap, base * multiplier**attempt)) ("full jitter").

    Full jitter spreads the retries of many shard processes hitting one sink, so they do
    not come back in lockstep.
    """

    base_ms: float = 100.0
    cap_ms: float = 20_000.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.base_ms <= 0 or self.cap_ms < self.base_ms or self.multiplier < 1:
            raise ValueError(f"invalid backoff: {self}")

    def ceiling_ms(self, attempt: int) -> float:
        # Compare exponents first: multiplier**attempt overflows floats in long outages.
        if self.multiplier == 1.0:
            return self.base_ms
        if attempt >= math.log(self.cap_ms / self.base_ms, self.multiplier):
            return self.cap_ms
        return min(self.cap_ms, self.base_ms * self.multiplier**attempt)

    def delay_ms(self, attempt: int, rand: Callable[[], float]) -> float:
        """rand() returns a float in [0, 1)."""
        return rand() * self.ceiling_ms(attempt)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Closed -> (threshold consecutive failures) -> open -> (reset timeout) -> half-open.

    Half-open lets one trial through: success closes, failure re-opens. `clock` returns
    milliseconds (monotonic in production).
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_ms: float = 10_000.0,
        clock: Callable[[], float] = lambda: time.monotonic() * 1000.0,
    ) -> None:
        if failure_threshold < 1 or reset_timeout_ms < 0:
            raise ValueError("invalid circuit breaker settings")
        self.failure_threshold = failure_threshold
        self.reset_timeout_ms = reset_timeout_ms
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_in_progress = False

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.reset_timeout_ms:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def wait_ms(self) -> float:
        """How long until a request would be allowed (0 if now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout_ms - self._clock())

    def allow_request(self) -> bool:
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_in_progress:
            self._trial_in_progress = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_in_progress = False

    def record_failure(self) -> None:
        self._failures += 1
        half_open = self.state is BreakerState.HALF_OPEN
        if half_open or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()  # (re-)open and restart the timeout
        self._trial_in_progress = False


class StopRetrying(Exception):
    """Raised instead of retrying once the caller said stop (e.g. the lease was lost)."""


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One failed attempt, for metrics and logs."""

    sink: str
    attempt: int  # 0 for the first failure
    delay_ms: float
    error: BaseException
    breaker: BreakerState


def _never() -> bool:
    return False


def _ignore(_: RetryEvent) -> None:
    return None


class Retrier:
    """Runs an operation until it succeeds, a non-retryable error occurs, or stop is asked."""

    def __init__(
        self,
        sink: str,
        backoff: Backoff | None = None,
        breaker: CircuitBreaker | None = None,
        *,
        retryable: Callable[[BaseException], bool],
        max_attempts: int | None = None,
        should_stop: Callable[[], bool] = _never,
        sleep: Callable[[float], object] = time.sleep,
        rand: Callable[[], float] = random.random,
        on_retry: Callable[[RetryEvent], None] = _ignore,
    ) -> None:
        self.sink = sink
        self.backoff = backoff or Backoff()
        self.breaker = breaker or CircuitBreaker()
        self._retryable = retryable
        self.max_attempts = max_attempts
        self.should_stop = should_stop
        self._sleep = sleep
        self._rand = rand
        self.on_retry = on_retry
        self.total_retries = 0
        self.last_error: str | None = None

    @property
    def retryable(self) -> Callable[[BaseException], bool]:
        return self._retryable

    def pause(self, attempt: int, error: BaseException) -> None:
        """Back off after failed attempt number `attempt` (also used for item-level retries)."""
        delay = self.backoff.delay_ms(attempt, self._rand)
        self.total_retries += 1
        self.last_error = f"{type(error).__name__}: {error}"
        self.on_retry(RetryEvent(self.sink, attempt, delay, error, self.breaker.state))
        self._sleep(delay / 1000.0)

    def call(self, op: Callable[[], T]) -> T:
        attempt = 0
        while True:
            if self.should_stop():
                raise StopRetrying(f"{self.sink}: stopped after {attempt} failed attempts")
            if not self.breaker.allow_request():
                # Open breaker: sleep out its timeout, then try the half-open trial.
                self._sleep(max(self.breaker.wait_ms(), 1.0) / 1000.0)
                continue
            try:
                result = op()
            except Exception as exc:
                if not self._retryable(exc):
                    # The sink answered (e.g. bad input): it is up, so free the breaker.
                    self.breaker.record_success()
                    raise
                self.breaker.record_failure()
                if self.max_attempts is not None and attempt + 1 >= self.max_attempts:
                    raise
                self.pause(attempt, exc)
                attempt += 1
                continue
            self.breaker.record_success()
            return result
