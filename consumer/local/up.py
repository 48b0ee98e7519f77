"""`aetherstream local up`: the emulators run until Ctrl-C/SIGTERM, whatever the consumer does.

The emulators hold the only copy of the stream and the tables in memory, so a consumer that
dies must not take them down: the stack keeps serving, and a worker started with
`aetherstream local env` takes over the leases.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from consumer.local.stack import LocalRun

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event, also: Callable[[], None] | None = None) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal received; stopping the local stack",
                 extra={"signal": signal.Signals(signum).name})
        stop.set()
        if also:
            also()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def serve(run: LocalRun, stop: threading.Event, announce: Callable[[str], None],
          consumer: bool = True) -> int:
    """Start the stack (and the consumer), announce the endpoints, wait for stop.

    Returns 1 if the consumer died on its way, else 0. The caller stops the run.
    """
    if not consumer:
        run.start_stack()
        install_stop_handlers(stop)
        announce(json.dumps(run.describe()))
        stop.wait()
        return 0
    info = run.start()
    supervisor = run.supervisor
    assert supervisor is not None
    install_stop_handlers(stop, supervisor.request_stop)
    announce(json.dumps(info))
    if supervisor.wait() == 0 or stop.is_set():
        return 0
    message = ("the consumer (KCL daemon) exited; the emulators stay up until Ctrl-C. "
               "Start a worker against them: eval \"$(aetherstream local env --run-dir "
               f"{run.run_dir})\" && aetherstream run --run-dir {run.run_dir}/worker-2")
    log.error(message)
    sys.stderr.write(f"local up: {message}\n")
    supervisor.stop()  # its metrics server and mirror; the daemon is already gone
    run.supervisor = None
    stop.wait()
    return 1
