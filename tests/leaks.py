"""What a tileproc run may leave behind: shared-memory segments and processes.

Used by the autouse fixture in conftest.py after every test, and by tests that
check a killed run directly.
"""

from __future__ import annotations

import os
import time

SHM = "/dev/shm"


def shm_entries() -> set[str]:
    """tileproc's segments in /dev/shm that this test process may own.

    Segment names carry the creating pid: those of other live processes outside
    this process tree (another test run on the same machine) are not ours.
    """
    try:
        names = {n for n in os.listdir(SHM) if n.startswith("tileproc_")}
    except OSError:
        return set()
    ours = descendants() | {os.getpid()}
    mine = set()
    for n in names:
        try:
            pid = int(n.split("_")[1])
        except (IndexError, ValueError):
            continue
        if pid in ours or not os.path.exists(f"/proc/{pid}"):
            mine.add(n)
    return mine


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if stat[0] == b"Z":
            continue
        kids.setdefault(int(stat[1]), []).append(int(name))
    return kids


def descendants(pid: int | None = None) -> set[int]:
    """Live (non-zombie) descendants of ``pid`` (default: this process)."""
    kids = _children()
    todo, found = [pid or os.getpid()], set()
    while todo:
        for child in kids.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def helper_processes() -> set[int]:
    """Long-lived helpers of this process that are not per-run: the forkserver and resource tracker."""
    keep = set()
    from multiprocessing import forkserver, resource_tracker

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        keep.add(pid)
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        keep.add(pid)
    return keep


def stray_processes() -> set[int]:
    """Descendants that are neither the forkserver nor the resource tracker."""
    return descendants() - helper_processes()


MARK = "TILEPROC_TEST_MARK"


def marked_processes(mark: str) -> set[int]:
    """Processes (anywhere, even re-parented) whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode() + b"\0"
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read() + b"\0":
                    found.add(int(name))
        except OSError:
            continue
    return alive(found) - helper_processes()


def alive(pids) -> set[int]:
    """Those of ``pids`` that still run (gone and zombie processes are not alive)."""
    running = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] != b"Z":
                    running.add(pid)
        except OSError:
            pass
    return running


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
