"""tests/support/steady_producer.Stragglers: the e2e lateness scenario's event-time shifts."""

from __future__ import annotations

import orjson

from consumer.local.producer import ProducerSpec, generate
from tests.support.steady_producer import Stragglers, event_ms


def test_stragglers_move_only_their_readings_back_by_their_distance() -> None:
    spec = ProducerSpec(records=400, poison_ratio=0.05, seed=3)
    moved = Stragglers(near_ms=20_000, far_ms=40_000)
    kinds = {"near": 0, "far": 0}
    for before, after in zip(generate(spec), moved.apply(generate(spec)), strict=True):
        if before.poison is not None:
            assert after == before
            continue
        b, a = orjson.loads(before.data), orjson.loads(after.data)
        kind = moved.kind(b["seq"])
        back = {"near": 20_000, "far": 40_000, None: 0}[kind]
        assert event_ms(b["ts"]) - event_ms(a["ts"]) == back
        assert {k: v for k, v in a.items() if k != "ts"} == {
            k: v for k, v in b.items() if k != "ts"}
        if kind:
            kinds[kind] += 1
    assert kinds["near"] > 5 and kinds["far"] > 5


def test_event_ms_reads_both_timestamp_forms() -> None:
    assert event_ms(1_795_000_000_123) == 1_795_000_000_123
    assert event_ms("2026-11-18T11:06:40.123Z") == 1_795_000_000_123
