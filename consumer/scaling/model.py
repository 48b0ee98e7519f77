"""How many ECS tasks a stream needs: a pure function of the shards and their load.

KCL gives each shard lease to exactly one worker (task), so the useful task count lies
between the tasks needed to hold every lease and the number of open shards: a task beyond
that holds no lease and idles. Within that range the load decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShardLoad:
    """One shard and its observed ingest rate (peak per-second rate over the look-back)."""

    shard_id: str
    is_open: bool = True  # False once the shard has an ending sequence number (resharded)
    records_per_s: float = 0.0
    bytes_per_s: float = 0.0


@dataclass(frozen=True)
class Recommendation:
    tasks: int
    open_shards: int
    records_per_s: float
    bytes_per_s: float
    reasoning: list[str] = field(default_factory=list)


def _check_inputs(shards: Sequence[ShardLoad], records_per_task_per_s: float,
                  max_shards_per_task: int, bytes_per_task_per_s: float | None,
                  headroom: float) -> None:
    if not records_per_task_per_s > 0 or math.isinf(records_per_task_per_s):
        raise ValueError("records_per_task_per_s must be a positive finite number")
    if max_shards_per_task < 1:
        raise ValueError("max_shards_per_task must be at least 1")
    if bytes_per_task_per_s is not None and (
            not bytes_per_task_per_s > 0 or math.isinf(bytes_per_task_per_s)):
        raise ValueError("bytes_per_task_per_s must be a positive finite number")
    if not 0 < headroom <= 1:
        raise ValueError("headroom must be in (0, 1]")
    for s in shards:
        for value in (s.records_per_s, s.bytes_per_s):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"shard {s.shard_id}: load must be finite and >= 0")


def _tasks_for(load: float, capacity: float) -> int:
    # Round the quotient first so 3000/1000 does not become 4 through float noise.
    return math.ceil(round(load / capacity, 9))


def recommend(
    shards: Sequence[ShardLoad],
    *,
    records_per_task_per_s: float,
    max_shards_per_task: int,
    bytes_per_task_per_s: float | None = None,
    headroom: float = 0.7,
) -> Recommendation:
    """The task count for `shards`, with one reasoning line per rule that was applied.

    `headroom` is the share of a task's measured capacity we plan to use, so a burst or a
    failover (a survivor takes the dead task's leases) does not immediately create lag.
    """
    _check_inputs(shards, records_per_task_per_s, max_shards_per_task,
                  bytes_per_task_per_s, headroom)
    open_shards = sum(1 for s in shards if s.is_open)
    records = sum(s.records_per_s for s in shards)
    nbytes = sum(s.bytes_per_s for s in shards)
    why: list[str] = [f"{open_shards} open shard(s) of {len(shards)} listed; "
                      f"peak load {records:.1f} records/s, {nbytes:.0f} bytes/s"]

    by_leases = math.ceil(open_shards / max_shards_per_task)
    why.append(f"leases: ceil({open_shards} / {max_shards_per_task} shards per task) "
               f"= {by_leases}")
    by_records = _tasks_for(records, records_per_task_per_s * headroom)
    why.append(f"records: ceil({records:.1f} / ({records_per_task_per_s:g} x {headroom:g})) "
               f"= {by_records}")
    by_bytes = 0
    if bytes_per_task_per_s is not None:
        by_bytes = _tasks_for(nbytes, bytes_per_task_per_s * headroom)
        why.append(f"bytes: ceil({nbytes:.0f} / ({bytes_per_task_per_s:g} x {headroom:g})) "
                   f"= {by_bytes}")

    tasks = max(by_leases, by_records, by_bytes)
    if tasks > open_shards:
        why.append(f"capped at {open_shards} open shard(s): a task without a lease idles; "
                   "if the load needs more, split shards first")
        tasks = open_shards
    if tasks < 1:
        why.append("raised to 1: keep one worker so new records and new shards are picked up")
        tasks = 1
    why.extend(_hot_shard_warnings(shards, records_per_task_per_s, bytes_per_task_per_s))
    why.append(f"recommended tasks: {tasks}")
    return Recommendation(tasks=tasks, open_shards=open_shards, records_per_s=records,
                          bytes_per_s=nbytes, reasoning=why)


def _hot_shard_warnings(shards: Sequence[ShardLoad], records_cap: float,
                        bytes_cap: float | None) -> list[str]:
    """A shard is processed by one task, so no task count helps a shard above one task's
    capacity; say so instead of silently recommending more tasks."""
    out = []
    for s in shards:
        if s.records_per_s > records_cap or (bytes_cap is not None and s.bytes_per_s > bytes_cap):
            out.append(f"warning: shard {s.shard_id} alone exceeds one task's capacity; "
                       "split it (adding tasks will not help)")
    return out
