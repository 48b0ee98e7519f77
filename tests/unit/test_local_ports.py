"""free_port: the local stack's ports come from outside the kernel's ephemeral range (which
bind(0) and outgoing connections draw from) and are never handed to two of our processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from consumer.local import procs
from consumer.local.procs import StartupError, free_port

HOLDER = textwrap.dedent(
    """
    import sys
    from consumer.local.procs import free_port
    print(free_port(), flush=True)
    sys.stdin.read()
    """
)


def test_ports_are_outside_the_ephemeral_range_and_distinct() -> None:
    lo, hi = procs._ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(not lo <= p <= hi for p in ports)
    assert len(set(ports)) == len(ports)
    for port in ports:  # each is bindable: nothing listens on it
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def _only(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    """Leave free_port exactly one candidate: port."""
    monkeypatch.setattr(procs, "_LOWEST_PORT", port)
    monkeypatch.setattr(procs, "_ephemeral_range", lambda: (port + 1, 65535))


def test_a_port_another_process_holds_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        held = int(holder.stdout.readline())  # claimed by the child, bound by nobody
        _only(monkeypatch, held)
        with pytest.raises(StartupError, match="no free loopback port"):
            free_port()
    finally:
        holder.communicate("")
    monkeypatch.setattr(procs, "_CLAIMED", {})  # the child is gone: its claim went with it
    assert free_port() == held


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # a port nobody has claimed
        squatter.listen()
        _only(monkeypatch, squatter.getsockname()[1])
        with pytest.raises(StartupError, match="no free loopback port"):
            free_port()


def test_a_host_whose_ephemeral_range_spans_every_port_still_gets_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_ephemeral_range", lambda: (1024, 65535))
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
