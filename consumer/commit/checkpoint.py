"""Checkpointing through the KCL protocol, with the daemon's documented error handling.

The daemon answers a checkpoint with the name of a Java exception, or none:
- ThrottlingException: DynamoDB is busy; back off and try again;
- ShutdownException: the lease is gone; the caller stops writing (not an error);
- InvalidStateException and anything else: the checkpoint is not retryable; the records
  stay uncheckpointed and will be replayed, which the sinks absorb by identity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal, Protocol

from amazon_kclpy.checkpoint_error import CheckpointError

from consumer.records.model import Position
from consumer.sinks.errors import RETRYABLE_KINDS, kcl_checkpoint_kind
from consumer.sinks.retry import Backoff, Retrier

log = logging.getLogger(__name__)
Outcome = Literal["ok", "lease_lost", "throttled", "failed"]


class Checkpointer(Protocol):
    def checkpoint(
        self, sequence_number: str | None = None, sub_sequence_number: int | None = None
    ) -> None: ...


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, CheckpointError) and kcl_checkpoint_kind(exc.value) in RETRYABLE_KINDS


def checkpoint_with_retry(
    checkpointer: Checkpointer,
    position: Position | None,
    attempts: int = 8,
    sleep: Callable[[float], object] = time.sleep,
) -> Outcome:
    """Checkpoint at `position` (None: at the end of what KCL delivered, e.g. SHARD_END).
    Throttling is retried with full-jitter backoff (many shards share one busy table), at
    most `attempts` times: the next commit tries again anyway."""
    seq = str(position.sequence) if position else None
    sub = position.sub_sequence if position else None
    retrier = Retrier("kcl-checkpoint", Backoff(base_ms=200, cap_ms=10_000),
                      retryable=_retryable, max_attempts=attempts, sleep=sleep)
    try:
        retrier.call(lambda: checkpointer.checkpoint(seq, sub))
        return "ok"
    except CheckpointError as exc:
        if exc.value == "ShutdownException":
            log.warning("checkpoint refused: lease lost")
            return "lease_lost"
        if _retryable(exc):
            log.error("checkpoint throttled %d times; records will be replayed", attempts)
            return "throttled"
        log.error("checkpoint failed, records will be replayed", extra={"error": exc.value})
        return "failed"
