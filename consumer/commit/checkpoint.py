"""Checkpointing through the KCL protocol, with the daemon's documented error handling.

The daemon answers a checkpoint with the name of a Java exception, or none:
- ThrottlingException: DynamoDB is busy; back off and try again;
- ShutdownException: the lease is gone; the caller stops writing (not an error);
- InvalidStateException and anything else: the checkpoint is not retryable; the records
  stay uncheckpointed and will be replayed, which the sinks absorb by identity.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Literal, Protocol

from amazon_kclpy.checkpoint_error import CheckpointError

from consumer.records.model import Position

log = logging.getLogger(__name__)
Outcome = Literal["ok", "lease_lost", "throttled", "failed"]


class Checkpointer(Protocol):
    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


def checkpoint_with_retry(
    checkpointer: Checkpointer,
    position: Position | None,
    attempts: int = 8,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Checkpoint at `position` (None: at the end of what KCL delivered, e.g. SHARD_END)."""
    seq = str(position.sequence) if position else None
    sub = position.sub_sequence if position else None
    for attempt in range(attempts):
        try:
            checkpointer.checkpoint(seq, sub)
            return "ok"
        except CheckpointError as exc:
            if exc.value == "ShutdownException":
                log.warning("checkpoint refused: lease lost")
                return "lease_lost"
            if exc.value == "ThrottlingException":
                # Full jitter: spread retries of many shards hitting one busy table.
                sleep(random.uniform(0, min(10.0, 0.2 * 2**attempt)))
                continue
            log.error("checkpoint failed, records will be replayed", extra={"error": exc.value})
            return "failed"
    log.error("checkpoint throttled %d times; records will be replayed", attempts)
    return "throttled"
