"""What the MultiLangDaemon runs per leased shard: `python -m consumer.kcl`.

The shard host (consumer/kcl/host.py): a small relay that runs the record processor
(`python -m consumer.kcl.worker`) as its child, so a processor that dies ends its shard's
tenure and not the daemon. Only the standard library is imported here.
"""

from __future__ import annotations

import sys

from consumer.kcl.host import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
