"""Entry point of one record-processor process: `python -m consumer.kcl`.

The MultiLangDaemon starts one per leased shard and talks to it over stdin/stdout.
"""

from __future__ import annotations

import logging
import sys
import time

from consumer.kcl.stdout_guard import guard_stdout

# When the daemon spawned this process: it orders two tenures of one worker over one shard
# (consumer/sinks/fence.py), so it is read before anything slow happens.
SPAWNED_NS = time.time_ns()


def main() -> int:
    protocol_out = guard_stdout()  # first: nothing may reach stdout before this
    from consumer.aws import client
    from consumer.config import load_settings
    from consumer.kcl.processor import ShardProcessor
    from consumer.kcl.protocol import kcl_process
    from consumer.metrics.logs import configure_logging
    from consumer.metrics.registry import assert_multiprocess_mode

    settings = load_settings()
    configure_logging(settings.log.level, component="processor")
    assert_multiprocess_mode()
    processor = ShardProcessor(settings, client("s3"), client("dynamodb"), SPAWNED_NS)
    try:
        kcl_process(processor, sys.stdin, protocol_out, sys.stderr).run()
    finally:
        logging.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
