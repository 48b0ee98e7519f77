"""A TCP pass-through with a gate: while closed, bytes from the client wait in the proxy.

It stands between one writer and a real server (PostgreSQL, moto, osmem) to hold that writer's
request on the wire, like a slow network or a server that stalls, while everything else goes on.
Opening the gate delivers what waited, in order. Nothing is dropped or changed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType


class Gate:
    """`holds(chunk)` picks which bytes wait while the gate is closed (default: all), e.g.
    only an HTTP request line that names a path."""

    def __init__(self, upstream_host: str, upstream_port: int,
                 holds: Callable[[bytes], bool] = lambda _: True) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._holds = holds
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self.held = threading.Event()  # set when a client sent bytes while the gate was closed

    def close(self) -> None:
        self.held.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def __enter__(self) -> Gate:
        self._spawn(self._accept)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stopping = True
        self._open.set()
        self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        try:
            while data := src.recv(65536):
                if gated and not self._open.is_set() and self._holds(data):
                    self.held.set()
                    self._open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
