"""A print() (or a C-level write to fd 1) inside a processor cannot reach the KCL channel."""

import subprocess
import sys

CHILD = r"""
import os, sys
from consumer.kcl.stdout_guard import guard_stdout
out = guard_stdout()
print("stray print from our code")
os.write(1, b"stray write to fd 1\n")
out.write('{"action": "status", "responseFor": "initialize"}\n')
out.flush()
"""


def test_stray_output_goes_to_stderr_and_protocol_stays_clean() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"action": "status", "responseFor": "initialize"}\n'
    assert "stray print from our code" in done.stderr
    assert "stray write to fd 1" in done.stderr
