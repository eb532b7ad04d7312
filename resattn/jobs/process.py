"""Processes by pid *and* start time: alive checks, descendants, signalling and killing whole process trees,
and reaping the supervisors this process started.

A pid alone is not an identity (the OS reuses it); (pid, start time from ``/proc/<pid>/stat``) is, so a job is
never taken to run in a stranger's process, and no stranger is ever signalled. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path


def _proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, process group, start time in clock ticks since boot) from ``/proc/<pid>/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[2]), int(fields[19])


_HAS_PROC = Path("/proc/self/stat").exists()


def process_start(pid: int | None) -> int | None:
    """The start time of a live process (clock ticks since boot; 0 without ``/proc``), or None if it is gone or
    a zombie. (pid, start time) names one process even after its pid is reused."""
    if not pid:
        return None
    if not _HAS_PROC:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    stat = _proc_stat(pid)
    return None if stat is None or stat[0] in "ZXx" else stat[3]


def process_alive(pid: int | None, start: int | None) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``start`` (not a reused pid)."""
    now = process_start(pid)
    return now is not None and (start is None or not _HAS_PROC or now == start)


def _descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid`` (torchrun's workers run in their own sessions)."""
    if not _HAS_PROC:
        return []
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[0] not in "ZXx":
                children.setdefault(stat[1], []).append((int(entry), stat[3]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``, if it still has members."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_tree(pid: int, start: int | None, sig: int, known: Sequence[tuple[int, int]] = ()) -> None:
    """Signal ``pid``'s process group and every descendant's group (each checked against its start time)."""
    tree = list(known)
    if process_alive(pid, start):
        tree += _descendants(pid)
        _signal_group(pid, sig)
    for child, child_start in tree:
        if process_alive(child, child_start):
            try:
                os.killpg(os.getpgid(child), sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                os.kill(child, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _exited(proc: subprocess.Popen) -> bool:
    """Whether a child has exited, *without reaping it* where the OS allows (``waitid`` with ``WNOWAIT``): until
    it is reaped its pid, and so its process-group id, cannot be reused, so the group can still be signalled."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    return proc.poll() is not None


_CHILDREN: list[subprocess.Popen] = []  # supervisors this process started: reaped in reconcile()
_CHILDREN_LOCK = threading.Lock()


def _adopt_child(proc: subprocess.Popen) -> None:
    """Remember a detached child this process started, so :func:`_reap_children` can reap it once it exits."""
    with _CHILDREN_LOCK:
        _CHILDREN.append(proc)


def _reap_children() -> None:
    """Reap the exited children this process started (no zombies in a long-lived app server)."""
    with _CHILDREN_LOCK:
        _CHILDREN[:] = [p for p in _CHILDREN if p.poll() is None]
