"""A producer thread that sends at a steady rate until told to stop, and stragglers.

consumer/local/producer.produce sends in chunks of 2000 records and paces between them, so
at a few hundred records/s it sends in bursts seconds apart. The ownership scenarios need
records arriving throughout a lease move or a reshard, so this one sends a small chunk every
few tens of milliseconds, and keeps exactly what it sent (a test reconciles against that).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from consumer.aws import put_records
from consumer.local.producer import PUT_BATCH, UserRecord, to_kinesis_entries


class SteadyProducer(threading.Thread):
    """Sends `records` at `rate` user records/s, `chunk` at a time, until stop() or the end."""

    def __init__(self, kinesis: Any, stream: str, records: Iterable[UserRecord], rate: float,
                 chunk: int = 10, per_aggregate: int = 25) -> None:
        super().__init__(name=f"steady-producer-{stream}", daemon=True)
        self.kinesis, self.stream, self.rate = kinesis, stream, rate
        self.chunk, self.per_aggregate = chunk, per_aggregate
        self._records = iter(records)
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._sent: list[UserRecord] = []
        self.error: BaseException | None = None

    @property
    def sent(self) -> list[UserRecord]:
        with self._lock:
            return list(self._sent)

    @property
    def sent_count(self) -> int:
        with self._lock:
            return len(self._sent)

    def run(self) -> None:
        started = time.monotonic()
        try:
            while not self._stop_event.is_set():
                chunk = list(itertools.islice(self._records, self.chunk))
                if not chunk:
                    return
                entries = to_kinesis_entries(chunk, self.per_aggregate)
                for first in range(0, len(entries), PUT_BATCH):
                    put_records(self.kinesis, self.stream, entries[first:first + PUT_BATCH])
                with self._lock:
                    self._sent += chunk
                    due = started + len(self._sent) / self.rate
                self._stop_event.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # surfaced by finish(): a test must not miss it
            self.error = exc

    def finish(self) -> list[UserRecord]:
        """Stop after the chunk in flight; everything that was sent (raises a send error)."""
        self._stop_event.set()
        self.join(60)
        assert not self.is_alive(), "the producer did not stop"
        if self.error is not None:
            raise self.error
        return self.sent


@dataclass(frozen=True)
class Stragglers:
    """Every `near_every`-th valid reading moved `near_ms` back in event time (behind the
    watermark, within allowed lateness), every `far_every`-th moved `far_ms` back (beyond)."""

    near_ms: int
    far_ms: int
    near_every: int = 40
    far_every: int = 53

    def kind(self, seq: int) -> str | None:
        if seq % self.near_every == 7:
            return "near"
        if seq % self.far_every == 11:
            return "far"
        return None

    def apply(self, records: Iterable[UserRecord]) -> Iterator[UserRecord]:
        for record in records:
            if record.poison is not None:
                yield record
                continue
            body = orjson.loads(record.data)
            kind = self.kind(body["seq"])
            if kind is None:
                yield record
                continue
            back = self.near_ms if kind == "near" else self.far_ms
            body["ts"] = event_ms(body["ts"]) - back
            yield replace(record, data=orjson.dumps(body))


def event_ms(ts: int | str) -> int:
    """The producer writes epoch ms or ISO-8601 with milliseconds and Z."""
    if isinstance(ts, int):
        return ts
    from datetime import datetime

    return round(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
