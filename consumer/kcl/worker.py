"""The record processor's process: `python -m consumer.kcl.worker`, the shard host's child.

The shard host (consumer/kcl/host.py) relays the MultiLangDaemon's protocol to this process
over stdin/stdout, so its death ends this shard's tenure only, never the worker.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from consumer.kcl.stdout_guard import guard_stdout

# When the daemon spawned this shard's host: it orders two tenures of one worker over one
# shard (consumer/sinks/fence.py). The host hands it over; run alone, this process's own.
SPAWNED_NS = int(os.environ.get("AETHERSTREAM_SPAWNED_NS") or time.time_ns())


def main() -> int:
    protocol_out = guard_stdout()  # first: nothing may reach stdout before this
    # opensearch-py imports its asyncio transport whenever aiohttp is installed (it is, for
    # aws-embedded-metrics); the processor uses the sync client only, and that import cost
    # every processor 0.2 CPU-s of start-up. A None entry makes `import aiohttp` raise
    # ImportError, which opensearch-py expects (it then offers no async classes).
    sys.modules.setdefault("aiohttp", None)  # type: ignore[arg-type]
    from consumer.aws import client
    from consumer.config import load_settings, settings_path
    from consumer.kcl.collector import PeriodicCollector
    from consumer.kcl.processor import ShardProcessor
    from consumer.kcl.protocol import binary_input, kcl_process
    from consumer.metrics.logs import configure_logging
    from consumer.metrics.registry import assert_multiprocess_mode

    settings = load_settings()
    configure_logging(settings.log.level, component="processor")
    assert_multiprocess_mode()
    processor = ShardProcessor(settings, client("s3"), client("dynamodb"), SPAWNED_NS,
                               settings_path())
    collector = PeriodicCollector()
    collector.take_over()
    try:
        kcl_process(processor, binary_input(sys.stdin), protocol_out, sys.stderr,
                    collector.between_messages).run()
    finally:
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
