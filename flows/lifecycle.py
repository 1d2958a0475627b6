"""Clean shutdown of a command and of everything it started (Prefect's temporary server, Dask workers).

Two layers, because no single one covers every way a command ends:

* SIGTERM and SIGHUP become ``SystemExit`` in the main thread (SIGINT is already ``KeyboardInterrupt``), so
  context managers close the Dask cluster and Prefect's ``atexit`` hook stops its temporary server, exactly
  as on a normal exit;
* a watchdog process (``poisonlab.flows.watchdog``) stops whatever descendants remain once the command is
  gone, which is the only remedy when the command is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind like an exception, so cleanup code and ``atexit`` hooks run."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)


def start_watchdog() -> subprocess.Popen | None:
    """A small process that stops this process's descendants when it dies (also by SIGKILL)."""
    if os.environ.get("POISONLAB_NO_WATCHDOG"):
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "poisonlab.flows.watchdog", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
        )
    except OSError:
        return None  # no watchdog is better than no command


def install() -> None:
    """Call once, at the start of the command line's ``main``."""
    install_signal_handlers()
    start_watchdog()
