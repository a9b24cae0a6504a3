"""What a tileproc run may leave behind: shared-memory segments, spill folders,
semaphores, resource-tracker registrations and processes.

Used by the autouse fixture in conftest.py after every test, and by tests that
check a killed run directly.
"""

from __future__ import annotations

import os
import time

SHM = "/dev/shm"


def shm_entries() -> set[str]:
    """tileproc's segments in /dev/shm and spill folders in the temporary folder that this
    test process may own.

    Names say whose they are: those of other live processes outside this process
    tree (another test run on the same machine) or of another host or pid
    namespace are not ours.
    """
    from tiler import platform
    from tiler.sharedmem import owned_entries

    ours = descendants() | {os.getpid()}
    me = platform.me()
    return {
        path
        for path, owner in owned_entries()
        if owner.host == platform.host_tag()
        # a dead owner is ours only if it started after this test run did (a killed child of a test)
        and (owner.pid in ours or (platform.owner_dead(owner) and owner.start >= me.start))
    }


def sem_entries() -> set[str]:
    """Named semaphores in /dev/shm (``sem.*``; multiprocessing's are ``sem.mp-*``)."""
    try:
        return {n for n in os.listdir(SHM) if n.startswith("sem.")}
    except OSError:
        return set()


def unmapped(names: set[str]) -> set[str]:
    """Those of the /dev/shm ``names`` that no process maps: nothing will ever unlink them."""
    left = {n for n in names if os.path.exists(os.path.join(SHM, n))}
    if not left:
        return left
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        left = {n for n in left if f"/dev/shm/{n}" not in maps}
        if not left:
            break
    return left


class TrackerLog:
    """Registrations with multiprocessing's resource tracker made by this process during a
    test and not withdrawn: each would be a "leaked ..." warning when the tracker ends."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str], int] = {}

    def install(self, monkeypatch) -> None:
        from multiprocessing import resource_tracker

        register, unregister = resource_tracker.register, resource_tracker.unregister

        def on_register(name, rtype):
            self.open[(name, rtype)] = self.open.get((name, rtype), 0) + 1
            return register(name, rtype)

        def on_unregister(name, rtype):
            self.open.pop((name, rtype), None)
            return unregister(name, rtype)

        monkeypatch.setattr(resource_tracker, "register", on_register)
        monkeypatch.setattr(resource_tracker, "unregister", on_unregister)

    def leaked(self) -> list[str]:
        return sorted(f"{rtype} {name}" for (name, rtype) in self.open)


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
    """Long-lived helpers of this process that are not per-run: tileproc's zygotes, and the
    forkserver and resource tracker (which other libraries of the test process may start)."""
    from tiler.launcher import zygote_pids

    keep = set(zygote_pids())
    from multiprocessing import forkserver, resource_tracker

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        keep.add(pid)
    pid = getattr(resource_tracker._resource_tracker, "_pid", None)
    if pid:
        keep.add(pid)
    return keep


def stray_processes() -> set[int]:
    """Descendants that are not long-lived helpers (:func:`helper_processes`)."""
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
