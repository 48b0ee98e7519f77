"""Fence tokens order tenures as KCL's lease does (hypothesis over lease histories).

A history is a sequence of takes (a worker becomes the owner, the counter grows) and renewals
(the counter grows). KCL spawns one processor per tenure; it confirms the lease at some point
while its tenure lasts and reads the counter then. The token of a later tenure must supersede
every earlier one, and never the other way round: that is what lets a sink refuse a stale
writer, and what keeps a processor that finishes initialize late from fencing out the owner.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.sinks.fence import FenceToken

events = st.lists(st.one_of(st.tuples(st.just("take"), st.sampled_from("abc")),
                            st.tuples(st.just("renew"), st.just(""))), min_size=1, max_size=40)


@given(events, st.data())
def test_later_tenures_supersede_earlier_ones(history: list[tuple[str, str]],
                                              data: st.DataObject) -> None:
    spawned = 0
    tenures: list[tuple[str, list[int], int]] = []  # (owner, counters seen, spawn time)
    for counter, (kind, worker) in enumerate(history, 1):  # every event bumps the counter
        if kind == "take":
            spawned += data.draw(st.integers(1, 5))
            tenures.append((worker, [counter], spawned))
        elif tenures:
            tenures[-1][1].append(counter)
    tokens = [FenceToken(owner, data.draw(st.sampled_from(seen)), spawn)
              for owner, seen, spawn in tenures]
    for i, older in enumerate(tokens):
        assert older.supersedes(older)
        for newer in tokens[i + 1:]:
            assert newer.supersedes(older)
            assert not older.supersedes(newer)


def test_same_worker_orders_by_spawn_different_workers_by_counter() -> None:
    old = FenceToken("a", lease_counter=7, spawned_ns=100)
    retaken = FenceToken("a", lease_counter=3, spawned_ns=200)  # counter read early, spawned later
    assert retaken.supersedes(old) and not old.supersedes(retaken)
    other = FenceToken("b", lease_counter=8, spawned_ns=50)
    assert other.supersedes(old) and not old.supersedes(other)
