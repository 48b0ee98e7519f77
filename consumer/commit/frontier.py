"""The commit frontier: how far a shard may be checkpointed (pure).

KCL resumes a shard *after* the checkpointed record, so the checkpoint must name a record
that every stage is done with. Stages (sink buffers, open windows) report the smallest
position they still hold; the frontier answers with the newest record seen *before* that
position. It never moves backwards and never passes a held record.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence

from consumer.records.model import Position


class CommitFrontier:
    def __init__(self, checkpointed: Position | None = None) -> None:
        # Positions seen since the last checkpoint, in shard order (KCL delivers in order).
        self._seen: list[Position] = []
        self.checkpointed = checkpointed

    @property
    def pending(self) -> int:
        """Records seen but not yet covered by a checkpoint."""
        return len(self._seen)

    def observe(self, positions: Sequence[Position]) -> None:
        if positions and self._seen and positions[0] <= self._seen[-1]:
            raise ValueError(f"positions went backwards: {positions[0]} after {self._seen[-1]}")
        self._seen.extend(positions)

    def safe_position(self, held: Iterable[Position | None]) -> Position | None:
        """The newest seen position strictly before every held one; None if no progress."""
        holds = [h for h in held if h is not None]
        if not self._seen:
            return None
        if not holds:
            return self._seen[-1]
        index = bisect_left(self._seen, min(holds))
        return self._seen[index - 1] if index > 0 else None

    def mark_checkpointed(self, position: Position) -> None:
        """Forget everything up to and including `position`."""
        if self.checkpointed is not None and position < self.checkpointed:
            raise ValueError(f"checkpoint moved backwards: {position} < {self.checkpointed}")
        del self._seen[: bisect_right(self._seen, position)]
        self.checkpointed = position
