"""A watchdog process that stops a command's descendants when the command dies, however it dies.

Prefect starts its temporary API server (a uvicorn process of about 230 MB) with ``subprocess.Popen`` and
stops it from ``atexit``; a command killed with SIGKILL (or by the OOM killer) never runs ``atexit``, and the
server stays behind as an orphan, as can any process a library starts. Signal handlers cannot help there,
so a separate small process watches the command: it keeps a list of the command's descendants, and once
the command is gone it terminates those still running (then kills them after a grace period). psutil
processes carry their creation time, so a recycled pid is never mistaken for a descendant.

Run as ``python -m poisonlab.flows.watchdog PID``; ``poisonlab.flows.lifecycle`` starts it.
"""

from __future__ import annotations

import signal
import sys
import time

import psutil

POLL_SECONDS = 0.25
GRACE_SECONDS = 3.0


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _snapshot(parent: psutil.Process, known: dict[int, psutil.Process], me: int) -> None:
    """Remember the parent's current descendants; forget those that have exited."""
    try:
        for child in parent.children(recursive=True):
            if child.pid != me:
                known.setdefault(child.pid, child)
    except psutil.Error:
        pass
    for pid in [pid for pid, p in known.items() if not _alive(p)]:
        del known[pid]


def stop(procs: list[psutil.Process], grace: float = GRACE_SECONDS) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the processes that were still running."""
    alive = [p for p in procs if _alive(p)]
    for proc in alive:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace)
    return alive


def watch(parent_pid: int, poll: float = POLL_SECONDS) -> None:
    """Follow ``parent_pid`` until it is gone, then stop every descendant it left behind."""
    me = psutil.Process().pid
    try:
        parent = psutil.Process(parent_pid)
    except psutil.Error:
        return
    known: dict[int, psutil.Process] = {}
    while _alive(parent):
        _snapshot(parent, known, me)
        time.sleep(poll)
    stop(list(known.values()))


def main(argv: list[str]) -> int:
    # Ctrl-C and a closed terminal reach the whole process group: the watchdog outlives them to clean up.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    watch(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
