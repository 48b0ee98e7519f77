"""Liveness and readiness of the supervisor, judged from the merged shard metrics.

Liveness (/healthz) answers "is the supervisor loop still turning?": the loop calls
:meth:`HealthChecks.tick` every iteration; a loop that stops ticking for ``max_loop_age_s``
(or has called :meth:`HealthChecks.stopped`) is not live.

Readiness (/readyz) answers "is this task consuming?": the daemon runs, at least one shard
lease is held, the newest processor heartbeat is fresh, and no shard's record processor died
within ``failure_window_s`` (the check names each such shard, its reason and its count).
It reads the same merged registry as /metrics, so what the probe sees is what the dashboards see.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Metric

HEARTBEAT = "aetherstream_processor_heartbeat_timestamp_seconds"
LEASES = "aetherstream_leases_held"
LAST_FAILURE = "aetherstream_processor_last_failure_timestamp_seconds"
FAILURES = "aetherstream_processor_failures_total"
# Longer than one crash loop's turn (the host's backoff cap, 120 s, plus KCL re-leasing the
# shard), so a shard that keeps failing stays failed here without a gap.
FAILURE_WINDOW_S = 300.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verdict:
    """The outcome of a probe, ready to be served as JSON."""

    checks: tuple[Check, ...]
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ok", all(c.ok for c in self.checks))

    def as_json(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "fail",
            "failed": [c.name for c in self.checks if not c.ok],
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


def _values(families: list[Metric], name: str) -> list[float]:
    return [s.value for f in families for s in f.samples if s.name == name]


@dataclass(frozen=True)
class ShardFailure:
    shard: str
    reason: str  # of the newest failure
    at: float  # unix time of the newest failure
    count: int  # failures of the shard since the worker started


def shard_failures(families: list[Metric]) -> list[ShardFailure]:
    """Each shard's newest processor failure, with its reason and the shard's failure count."""
    newest: dict[str, tuple[float, str]] = {}
    counts: dict[str, float] = {}
    for f in families:
        for s in f.samples:
            shard = s.labels.get("shard", "unknown")
            if s.name == LAST_FAILURE and s.value > newest.get(shard, (0.0, ""))[0]:
                newest[shard] = (s.value, s.labels.get("reason", ""))
            elif s.name == FAILURES:
                counts[shard] = counts.get(shard, 0.0) + s.value
    return [ShardFailure(shard, reason, at, int(counts.get(shard, 0)))
            for shard, (at, reason) in sorted(newest.items())]


def newest_heartbeat(families: list[Metric]) -> float | None:
    """The largest heartbeat timestamp over all shards, or None if no processor reported."""
    return max(_values(families, HEARTBEAT), default=None)


class HealthChecks:
    """The probes' logic; :class:`consumer.metrics.server.MetricsServer` serves it."""

    def __init__(
        self,
        daemon_alive: Callable[[], bool],
        max_heartbeat_age_s: float,
        *,
        max_loop_age_s: float = 60.0,
        require_lease: bool = True,
        failure_window_s: float = FAILURE_WINDOW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._daemon_alive = daemon_alive
        self.max_heartbeat_age_s = max_heartbeat_age_s
        self.max_loop_age_s = max_loop_age_s
        # A worker in a fleet larger than the shard count may legitimately hold no lease.
        self.require_lease = require_lease
        self.failure_window_s = failure_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_tick = clock()
        self._stopped = False

    def tick(self) -> None:
        """Called by the supervisor loop on every iteration."""
        with self._lock:
            self._last_tick = self._clock()

    def stopped(self) -> None:
        """The supervisor loop has ended: liveness fails from now on."""
        with self._lock:
            self._stopped = True

    def liveness(self) -> Verdict:
        with self._lock:
            age = self._clock() - self._last_tick
            stopped = self._stopped
        if stopped:
            return Verdict((Check("loop", False, "supervisor loop has stopped"),))
        ok = age <= self.max_loop_age_s
        detail = f"last loop iteration {age:.1f}s ago (limit {self.max_loop_age_s:g}s)"
        return Verdict((Check("loop", ok, detail),))

    def readiness(self, source: CollectorRegistry) -> Verdict:
        families = list(source.collect())  # one merge of the shard files per probe
        held = sum(_values(families, LEASES))
        if held == 0 and not self.require_lease:
            beat = Check("heartbeat", True, "no processors running, none expected")
        else:
            beat = self._check_heartbeat(families)
        return Verdict((self._check_daemon(), self._check_leases(held), beat,
                        self._check_processors(families)))

    def _check_daemon(self) -> Check:
        try:
            alive = self._daemon_alive()
        except Exception as exc:  # a probe must answer, not crash the server thread
            return Check("daemon", False, f"daemon check raised {exc!r}")
        detail = "daemon running" if alive else "daemon process is not running"
        return Check("daemon", alive, detail)

    def _check_leases(self, held: float) -> Check:
        if held > 0 or not self.require_lease:
            return Check("leases", True, f"{held:g} shard lease(s) held")
        return Check("leases", False, "no shard lease held")

    def _check_heartbeat(self, families: list[Metric]) -> Check:
        newest = newest_heartbeat(families)
        if newest is None:
            return Check("heartbeat", False, "no processor heartbeat reported")
        age = self._clock() - newest
        ok = age <= self.max_heartbeat_age_s
        detail = f"newest processor heartbeat {age:.1f}s old (limit {self.max_heartbeat_age_s:g}s)"
        return Check("heartbeat", ok, detail)

    def _check_processors(self, families: list[Metric]) -> Check:
        now = self._clock()
        failing = [f for f in shard_failures(families) if now - f.at <= self.failure_window_s]
        if not failing:
            return Check("processors", True,
                         f"no record processor failed in the last {self.failure_window_s:g}s")
        detail = "; ".join(
            f"{f.shard} failed {f.count} time(s), last {now - f.at:.0f}s ago ({f.reason})"
            for f in failing)
        return Check("processors", False, detail)
