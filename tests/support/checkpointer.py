"""A checkpointer that records what KCL would have been told (the Checkpointer protocol of
consumer/commit/checkpoint.py), optionally answering with KCL's errors."""

from __future__ import annotations

from amazon_kclpy.checkpoint_error import CheckpointError

from consumer.records.model import Position


class RecordingCheckpointer:
    def __init__(self, errors: list[str] | None = None) -> None:
        self.positions: list[Position | None] = []
        self._errors = list(errors or [])  # raised in order, one per call, before succeeding

    def checkpoint(self, sequence_number: str | None = None,
                   sub_sequence_number: int | None = None) -> None:
        if self._errors:
            raise CheckpointError(self._errors.pop(0))
        self.positions.append(None if sequence_number is None
                              else Position(int(sequence_number), int(sub_sequence_number or 0)))

    @property
    def last(self) -> Position | None:
        return self.positions[-1] if self.positions else None
