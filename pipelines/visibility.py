"""What a shard task must see where it runs, checked there before it touches anything.

On a cluster the driver and the workers may not share a working directory or even a file system. A
worker that cannot see a task's input would otherwise read an empty shard and write an empty one marked
complete, which the driver only discovers later as a mismatched plan. Sources and sinks that read or
write folders say which paths they need (``needed_paths``); ``check_task_paths`` runs first in every shard
task and fails with one line naming the path and the worker, before any marker, sidecar or tar is written.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class TaskPaths:
    """Paths that must exist and be readable (``read``: folders or files) or be writable folders (``write``)."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()

    def __add__(self, other: TaskPaths) -> TaskPaths:
        return TaskPaths(self.read + other.read, self.write + other.write)


@runtime_checkable
class NeedsPaths(Protocol):
    """A source or sink that touches the file system and says where, per shard."""

    def needed_paths(self, shard: str) -> TaskPaths: ...


class TaskPathError(RuntimeError):
    """A shard task runs where its input or output cannot be seen (another machine or working directory)."""


def where() -> str:
    """This worker, as a user can find it: host, process and working directory."""
    return f"{socket.gethostname()} (pid {os.getpid()}, cwd {os.getcwd()})"


def _problem(path: str, writable: bool) -> str | None:
    if not os.path.exists(path):
        return "does not exist"
    if writable and not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        return "is not a writable folder"
    if not writable and not os.access(path, os.R_OK):
        return "is not readable"
    return None


def paths_of(*parts: object, shard: str) -> TaskPaths:
    """The paths the given sources/sinks need for ``shard`` (those that touch no files need none)."""
    total = TaskPaths()
    for part in parts:
        if isinstance(part, NeedsPaths):
            total = total + part.needed_paths(shard)
    return total


def check_paths(paths: TaskPaths, shard: str) -> None:
    """Raise ``TaskPathError`` on the first path this process cannot use as the task needs."""
    for kind, group, writable in (("input", paths.read, False), ("output folder", paths.write, True)):
        for path in group:
            problem = _problem(path, writable)
            if problem is not None:
                raise TaskPathError(f"shard {shard}: {kind} {path} {problem} on worker {where()}; every worker "
                                    "must see the input and output folders at the same absolute paths")
