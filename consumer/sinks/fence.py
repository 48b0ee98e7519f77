"""Who may write a shard's data: the fence token a sink compares before it makes a write visible.

A token names one tenure of one record processor over one shard: the KCL worker that held the
lease, the lease counter it read when it confirmed that (a consistent read of KCL's own lease
table), and when the processor process was spawned. The order between two tokens for a shard is
provably the order of their lease tenures:

- different owners: KCL increments the lease counter on every take, steal and renewal, so a
  processor that confirmed the lease later, after it changed hands, read a larger counter;
- the same owner (a worker that lost a shard and took it back while the old processor was still
  blocked in a write): KCL spawns a new processor for each tenure, so the later spawn is newer.

A processor that starts late therefore never supersedes the current owner: it confirms the lease
before it claims, and the lease says who owns the shard now.
"""

from __future__ import annotations

from dataclasses import dataclass


class Fenced(Exception):
    """Another tenure owns the shard: this processor must not write or checkpoint again."""


@dataclass(frozen=True, slots=True)
class FenceToken:
    owner: str  # the KCL worker id (leaseOwner)
    lease_counter: int  # leaseCounter as read when the lease was confirmed to be the owner's
    spawned_ns: int  # wall-clock ns at which the processor process started

    def supersedes(self, other: FenceToken) -> bool:
        """True if this tenure is the same as `other` or newer, so it may take over its fence."""
        if self.owner == other.owner:
            return self.spawned_ns >= other.spawned_ns
        return self.lease_counter > other.lease_counter
