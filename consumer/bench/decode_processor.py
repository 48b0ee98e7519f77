"""The decode-only baseline: the protocol plus a base64 decode of every record, nothing else.

`python -m consumer.bench.decode_processor`; see consumer/bench/noop_processor.py.
"""

from __future__ import annotations

import sys

from amazon_kclpy import kcl

from consumer.bench.noop_processor import NoopProcessor

if __name__ == "__main__":
    kcl.KCLProcess(NoopProcessor(decode=True)).run()
    sys.exit(0)
