"""Everything tileproc asks of Linux, in one place: a port to another system is this file.

* shared memory: the tmpfs at ``/dev/shm``, its free space, ``posix_fallocate``
  (pages reserved when a slot is made, so a full tmpfs is an ``ENOSPC`` now,
  never a ``SIGBUS`` later), the file size limit (``ulimit -f``);
* process identity: the host, its boot and the pid namespace, and a process's
  start time (``/proc``), so that a name says whose it is and a sweep can tell
  a dead owner from a live one in another container or on another machine;
* workers: CPUs this process may use, glibc's ``mallopt``, the parent-death
  signal, the thread-pool variables of numpy/OpenCV/BLAS.

Importing :mod:`tiler` elsewhere stops here with one line.
"""

from __future__ import annotations

import sys

if not sys.platform.startswith("linux"):  # pragma: no cover - the tests run on Linux
    raise ImportError(
        f"tileproc runs on Linux only (it needs /dev/shm, fork and /proc); this system is {sys.platform!r}"
    )

import contextlib  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402

__all__ = [
    "SHM_DIR",
    "THREAD_VARS",
    "Owner",
    "cpu_count",
    "free_bytes",
    "file_size_limit",
    "reserve",
    "keep_heap",
    "die_with_parent",
    "host_tag",
    "me",
    "start_time",
    "owner_dead",
    "OWNER_PATTERN",
]

SHM_DIR = "/dev/shm"

# Thread pools that numpy, OpenCV and BLAS size from the environment when they load.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
)


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return max(1, len(os.sched_getaffinity(0)))


def free_bytes(folder: str) -> int | None:
    """Bytes an unprivileged writer may still put in ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def file_size_limit() -> int | None:
    """This process's largest file size (``ulimit -f``) in bytes; None when unlimited."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else limit


def reserve(fd: int, size: int) -> None:
    """Give the file ``fd`` ``size`` bytes of real storage now (raises ``OSError`` ENOSPC when full).

    On tmpfs a page that was never touched is allocated on first write, and a
    full tmpfs answers that write with SIGBUS; ``posix_fallocate`` turns it into
    an error here, while the caller can still choose another plan.
    """
    os.posix_fallocate(fd, 0, size)


def keep_heap(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> None:
    """Keep freed filter temporaries mapped instead of returning them to the kernel (glibc).

    Without this glibc unmaps every large temporary when a tile is done and the
    next tile faults its pages in again: at 1080p that cost as much CPU as the
    filter itself (benchmarks/README.md). Not glibc (musl): nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, trim_threshold)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def die_with_parent(signum: int) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent thread exits
    (``prctl(PR_SET_PDEATHSIG)``); best effort, the caller keeps its own watch."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG = 1


# -- whose is a name ---------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def host_tag() -> str:
    """Twelve hex digits naming this host, boot and pid namespace.

    Two processes see the same tag only when their pids mean the same thing:
    the same machine (host name and boot id: a reboot or another machine on a
    shared folder gives another tag) and the same pid namespace (a container
    sharing /dev/shm or a bind mount gives another tag).
    """
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    # os.uname().nodename is what socket.gethostname() returns on Linux, without importing socket
    ident = "\0".join((os.uname().nodename, _read("/proc/sys/kernel/random/boot_id"), pidns))
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat``); None if it is gone.

    With the boot id in :func:`host_tag`, (pid, start time) names one process
    for good: a pid reused later has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in (b"Z", b"X"):  # a zombie has finished: it owns nothing any more
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Owner:
    """Whose a segment or temporary is: host tag, pid and start time, as in its name."""

    host: str
    pid: int
    start: int

    @property
    def token(self) -> str:
        """The owner as it stands in names: ``HOST-PID-START``."""
        return f"{self.host}-{self.pid}-{self.start}"

    @classmethod
    def parse(cls, token: str) -> Owner | None:
        m = _OWNER.fullmatch(token)
        return cls(m.group(1), int(m.group(2)), int(m.group(3))) if m else None


_OWNER = re.compile(r"([0-9a-f]{12})-(\d+)-(\d+)")
OWNER_PATTERN = _OWNER.pattern


_me: Owner | None = None


def me() -> Owner:
    """This process as an :class:`Owner` (computed again in a forked child)."""
    global _me
    pid = os.getpid()
    if _me is None or _me.pid != pid:
        _me = Owner(host_tag(), pid, start_time(pid) or 0)
    return _me


def owner_dead(owner: Owner) -> bool:
    """True only when ``owner`` is provably gone: same host, boot and pid namespace as this
    process, and its pid runs no more or runs a later process. Anything else is kept."""
    if owner.host != host_tag():
        return False
    started = start_time(owner.pid)
    return started is None or started != owner.start
