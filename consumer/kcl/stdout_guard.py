"""Keep the KCL protocol channel (stdout) for the protocol alone.

The MultiLangDaemon reads our stdout as protocol messages: one stray print() from our code
or a library would corrupt it. We move the real stdout to a private file descriptor handed
only to amazon_kclpy, and point fd 1 (and sys.stdout) at stderr, so a print, or a C library
writing to fd 1, ends up in the log instead.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def guard_stdout() -> TextIO:
    """Return a writer on the original stdout; everything else printed goes to stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8")
