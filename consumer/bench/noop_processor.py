"""The practical floor: an amazon_kclpy processor that does nothing but checkpoint each batch.

`python -m consumer.bench.noop_processor`, driven like any record processor. The decode-only
baseline (consumer/bench/decode_processor.py) is the same class with decode=True.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor


class NoopProcessor(processor.RecordProcessorBase):  # type: ignore[misc]
    def __init__(self, decode: bool) -> None:
        self.decode = decode
        self.decoded_bytes = 0  # kept so the decoding is observable work

    def initialize(self, initialize_input: Any) -> None:
        pass

    def process_records(self, process_records_input: Any) -> None:
        records = process_records_input.records
        if self.decode:
            self.decoded_bytes += sum(len(base64.b64decode(r.data)) for r in records)
        if records:
            last = records[-1]
            process_records_input.checkpointer.checkpoint(last.sequence_number,
                                                          last.sub_sequence_number)

    def lease_lost(self, lease_lost_input: Any) -> None:
        pass

    def shard_ended(self, shard_ended_input: Any) -> None:
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input: Any) -> None:
        shutdown_requested_input.checkpointer.checkpoint()


if __name__ == "__main__":
    kcl.KCLProcess(NoopProcessor(decode=False)).run()
    sys.exit(0)
