"""Readiness and liveness verdicts from a registry snapshot (no HTTP)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from consumer.metrics.health import HealthChecks

NOW = 1_000_000.0


def _registry(leases: float | None, heartbeats: dict[str, float]) -> CollectorRegistry:
    reg = CollectorRegistry()
    if leases is not None:
        Gauge("aetherstream_leases_held", "x", registry=reg).set(leases)
    beat = Gauge("aetherstream_processor_heartbeat_timestamp_seconds", "x", ["shard"],
                 registry=reg)
    for shard, ts in heartbeats.items():
        beat.labels(shard).set(ts)
    return reg


def _failed(checks: HealthChecks, reg: CollectorRegistry) -> list[str]:
    verdict = checks.readiness(reg)
    body = verdict.as_json()
    assert body["status"] == ("ok" if verdict.ok else "fail")
    assert isinstance(body["failed"], list)
    return body["failed"]


def test_newest_heartbeat_of_any_shard_counts() -> None:
    checks = HealthChecks(lambda: True, 30, clock=lambda: NOW)
    assert _failed(checks, _registry(2, {"a": NOW - 300, "b": NOW - 5})) == []
    assert _failed(checks, _registry(2, {"a": NOW - 300, "b": NOW - 31})) == ["heartbeat"]


def test_each_failed_check_is_named() -> None:
    dead = HealthChecks(lambda: False, 30, clock=lambda: NOW)
    assert _failed(dead, _registry(None, {})) == ["daemon", "leases", "heartbeat"]

    def broken() -> bool:
        raise OSError("no such process")

    verdict = HealthChecks(broken, 30, clock=lambda: NOW).readiness(_registry(1, {"a": NOW}))
    assert not verdict.ok and "OSError" in verdict.checks[0].detail


def test_worker_without_lease_can_be_ready_when_allowed() -> None:
    checks = HealthChecks(lambda: True, 30, require_lease=False, clock=lambda: NOW)
    assert _failed(checks, _registry(0, {})) == []
    # Once it holds a lease, its processors must heartbeat again.
    assert _failed(checks, _registry(1, {"a": NOW - 60})) == ["heartbeat"]


def test_liveness_follows_ticks() -> None:
    now = [NOW]
    checks = HealthChecks(lambda: True, 30, max_loop_age_s=10, clock=lambda: now[0])
    assert checks.liveness().ok
    now[0] += 11
    assert not checks.liveness().ok
    checks.tick()
    assert checks.liveness().ok
    checks.stopped()
    assert checks.liveness().as_json()["failed"] == ["loop"]


def _with_failures(failures: list[tuple[str, str, float, int]]) -> CollectorRegistry:
    """(shard, reason, newest time, count): what shard hosts write when a processor dies."""
    reg = _registry(4, {"a": NOW})
    last = Gauge("aetherstream_processor_last_failure_timestamp_seconds", "x",
                 ["shard", "reason"], registry=reg)
    count = Counter("aetherstream_processor_failures_total", "x", ["shard", "reason"],
                    registry=reg)
    for shard, reason, at, n in failures:
        last.labels(shard, reason).set(at)
        count.labels(shard, reason).inc(n)
    return reg


def test_a_shard_whose_processor_died_recently_fails_readiness_by_name() -> None:
    checks = HealthChecks(lambda: True, 30, failure_window_s=300, clock=lambda: NOW)
    reg = _with_failures([("shardId-1", "signal:SIGKILL", NOW - 400, 1),
                          ("shardId-1", "auth:AccessDenied", NOW - 12, 2),
                          ("shardId-2", "exit:1", NOW - 301, 1)])
    verdict = checks.readiness(reg)
    assert _failed(checks, reg) == ["processors"]
    detail = next(c.detail for c in verdict.checks if c.name == "processors")
    # the newest reason, every failure of the shard, and not the shard that failed long ago
    assert detail == "shardId-1 failed 3 time(s), last 12s ago (auth:AccessDenied)"


def test_failures_older_than_the_window_no_longer_fail_readiness() -> None:
    now = [NOW]
    checks = HealthChecks(lambda: True, 30, failure_window_s=300, clock=lambda: now[0])
    reg = _with_failures([("shardId-3", "signal:SIGKILL", NOW, 1)])

    def processors_ok() -> bool:
        return next(c.ok for c in checks.readiness(reg).checks if c.name == "processors")

    assert not processors_ok()
    now[0] += 300
    assert not processors_ok()
    now[0] += 1
    assert processors_ok()
