"""The commit frontier never passes a held record and never moves backwards (hypothesis)."""

from hypothesis import given
from hypothesis import strategies as st

from consumer.commit.frontier import CommitFrontier
from consumer.records.model import Position


def positions(n: int) -> list[Position]:
    # Shard order with KPL sub-sequences: several user records share a sequence number.
    out, seq = [], 100
    for i in range(n):
        if i % 3 == 0:
            seq += 7
        out.append(Position(seq, i % 3))
    return out


@given(st.integers(1, 60), st.data())
def test_safe_position_is_newest_before_every_hold(n: int, data: st.DataObject) -> None:
    seen = positions(n)
    frontier = CommitFrontier()
    frontier.observe(seen)
    holds = data.draw(st.lists(st.sampled_from(seen), max_size=4))
    safe = frontier.safe_position(holds)
    if not holds:
        assert safe == seen[-1]
    else:
        before = [p for p in seen if p < min(holds)]
        assert safe == (before[-1] if before else None)
        assert safe is None or all(safe < h for h in holds)


@given(st.lists(st.integers(1, 10), min_size=1, max_size=8), st.data())
def test_checkpoints_only_move_forward_and_prune(batches: list[int], data: st.DataObject) -> None:
    all_positions = positions(sum(batches))
    frontier = CommitFrontier()
    start = 0
    last = None
    for size in batches:
        batch = all_positions[start : start + size]
        start += size
        frontier.observe(batch)
        hold = data.draw(st.one_of(st.none(), st.sampled_from(batch)))
        safe = frontier.safe_position([hold])
        if safe is not None and (last is None or safe > last):
            frontier.mark_checkpointed(safe)
            last = safe
        assert frontier.pending == len(
            [p for p in all_positions[:start] if last is None or p > last]
        )


def test_positions_going_backwards_are_refused() -> None:
    frontier = CommitFrontier()
    frontier.observe([Position(5, 0)])
    try:
        frontier.observe([Position(4, 0)])
    except ValueError as exc:
        assert "backwards" in str(exc)
    else:
        raise AssertionError("accepted positions out of shard order")


def test_nothing_seen_means_no_checkpoint() -> None:
    assert CommitFrontier().safe_position([None]) is None
