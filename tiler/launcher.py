"""How worker processes start: tileproc's own zygote, a process that forks them.

A zygote is a fresh interpreter, started once per host process and thread
count, with an environment given to it explicitly (the host's, with every
thread-pool variable set to the worker's thread count), that imports numpy,
OpenCV and the filters once and then forks a worker for each request::

    host process ──request (pipe end, sys.path, cwd)──> zygote ──fork──> worker
         ^  <──────── pid + a status pipe ──────────────┘                   │
         └──────────────── the worker's own pipe (tasks, replies) ──────────┘

Compared with ``multiprocessing``'s forkserver, which it replaces:

* nothing of the host changes, even for a moment: no ``os.environ`` edit, no
  forkserver preload list, no daemon flag, no signal mask (the zygote runs in
  its own session, so a Ctrl-C in the host's terminal reaches only the host,
  which stops its workers itself);
* a worker never imports the host's ``__main__``: a script without a main
  guard, ``python -``, ``python -c`` and notebooks start workers alike;
* the zygote imports tileproc's own ``filters`` before the host's ``sys.path``
  applies, so a ``filters`` folder in the working directory cannot shadow it.

The zygote exits when the host closes its end (or dies); a worker exits when
its host dies (its own watch, and the parent-death signal). A started worker
is a :class:`Child`: ``pid``, ``sentinel`` (readable once it has exited),
``exitcode``, ``join``, ``is_alive``, ``terminate``, ``kill``, ``close``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from multiprocessing.connection import Connection, wait
from typing import Any

from tiler import platform
from tiler._imports import ROOT as _ROOT
from tiler._imports import own_package
from tiler.errors import TileprocError

__all__ = ["Child", "start_worker", "zygote_pids", "shutdown", "own_package"]

# Imported once by the zygote; every worker forked from it has them.
PRELOAD = ("numpy", "cv2", "filters", "filters.base", "filters.registry", "tiler.worker")
# Tileproc's own folder first (a "filters" in the working directory must not shadow its own).
_BOOT = (
    "import sys; sys.path[:] = [sys.argv[1]] + [p for p in sys.path if p not in ('', '.')]; "
    "from tiler.launcher import {0}; {0}()"
)
_STATUS = struct.Struct("q")


class Child:
    """A worker forked by a zygote; the zygote reaps it and reports its exit status."""

    def __init__(self, pid: int, status_fd: int):
        self.pid = pid
        self.sentinel = status_fd
        self.exitcode: int | None = None

    def _poll(self, timeout: float | None) -> bool:
        if self.exitcode is None and self.sentinel >= 0 and wait([self.sentinel], timeout):
            data = os.read(self.sentinel, _STATUS.size)
            self.exitcode = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else 255
        return self.exitcode is not None

    def is_alive(self) -> bool:
        return not self._poll(0)

    def join(self, timeout: float | None = None) -> None:
        self._poll(timeout)

    def _signal(self, signum: int) -> None:
        # The zygote writes the status as soon as it reaps the pid; a signal sent in the
        # instant between the two could reach a process that reuses the pid (as with
        # multiprocessing's forkserver, which has the same window).
        if not self._poll(0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _env(threads: int) -> dict[str, str]:
    """The environment of a worker: the host's, every thread pool held to ``threads``."""
    env = dict(os.environ)
    env.update({k: str(threads) for k in platform.THREAD_VARS})
    return env


class _Spawned:
    """A worker started as a fresh interpreter of its own (``start_method="spawn"``): slower
    to start than a fork of the zygote, for hosts that want nothing forked."""

    def __init__(self, conn: Connection, request: tuple, threads: int):
        self._popen = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOT.format("_spawned_main"),
                _ROOT,
                str(conn.fileno()),
                pickle.dumps(request).hex(),
            ],
            env=_env(threads),
            pass_fds=(conn.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self._popen.pid
        self.sentinel = os.pidfd_open(self.pid)

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def close(self) -> None:
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


class _Zygote:
    """The host's end of one zygote."""

    def __init__(self, threads: int):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT.format("_zygote_main"), _ROOT, str(theirs.fileno()), str(threads)],
                env=_env(threads),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()
        self.lock = threading.Lock()

    def start(self, conn: Connection, args: tuple) -> Child:
        request = pickle.dumps((args, list(sys.path), os.getcwd()))
        with self.lock:
            if self.sock.fileno() < 0:
                raise OSError("the worker zygote was stopped")
            try:
                socket.send_fds(self.sock, [struct.pack("I", len(request)) + request], [conn.fileno()])
                reply, fds, _flags, _addr = socket.recv_fds(self.sock, _STATUS.size, 1)
            except BaseException:
                # Interrupted (Ctrl-C) or broken between request and reply: the next reply could
                # be this one's, so this zygote is done; it exits and a new one serves later.
                self.sock.close()
                raise
        if len(reply) != _STATUS.size or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise OSError("the worker zygote ended")
        return Child(_STATUS.unpack(reply)[0], fds[0])

    def close(self) -> None:
        self.sock.close()  # the zygote's read ends: it exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_zygotes: dict[int, _Zygote] = {}
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A process forked from the host starts its own zygote if it needs one, never shares one."""
    global _lock
    _lock = threading.Lock()
    for z in _zygotes.values():
        z.sock.close()
    _zygotes.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _zygote(threads: int) -> _Zygote:
    with _lock:
        z = _zygotes.get(threads)
        if z is not None and (z.process.poll() is not None or z.sock.fileno() < 0):  # died, or given up
            z.close()
            z = None
        if z is None:
            if not _zygotes:
                atexit.register(shutdown)
            z = _zygotes[threads] = _Zygote(threads)
        return z


def start_worker(target: Any, conn: Connection, args: tuple, *, threads: int = 1, spawn: bool = False):
    """Fork a worker from the zygote for ``threads``; it runs ``target(conn, *args)``.

    ``target`` travels by reference (module and name); ``conn`` is the
    worker's end of its pipe, which the caller closes after this returns.
    ``spawn``: start a fresh interpreter instead of forking the zygote.
    Returns a :class:`Child` (or its like for ``spawn``).
    """
    if spawn:
        return _Spawned(conn, ((target, *args), list(sys.path), os.getcwd()), threads)
    try:
        return _zygote(threads).start(conn, (target, *args))
    except OSError:  # the zygote was stopped between the check and the request: once more
        with _lock:
            z = _zygotes.pop(threads, None)
        if z is not None:
            z.close()
    try:
        return _zygote(threads).start(conn, (target, *args))
    except OSError as exc:
        raise TileprocError(f"cannot start worker processes: {exc.strerror or exc}") from None


def zygote_pids() -> set[int]:
    """The zygotes of this process (long-lived helpers, like a forkserver)."""
    with _lock:
        return {z.process.pid for z in _zygotes.values() if z.process.poll() is None}


def shutdown() -> None:
    """Stop this process's zygotes (at exit; workers already started keep running)."""
    with _lock:
        zygotes = list(_zygotes.values())
        _zygotes.clear()
    for z in zygotes:
        z.close()


# -- the zygote's side -------------------------------------------------------------


def _zygote_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[2]))
    threads = int(sys.argv[3])
    for name in PRELOAD:
        __import__(name)
    import cv2

    cv2.setNumThreads(threads)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    status: dict[int, int] = {}  # pid -> write end of its status pipe
    buf = b""
    while True:
        try:
            ready, _, _ = select.select(list[socket.socket | int]([sock, wake_r]), [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
            _reap(status)
        if sock not in ready:
            continue
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 1)
        except OSError:
            return
        if not data:
            return
        buf += data
        (size,) = struct.unpack_from("I", buf)
        while len(buf) < 4 + size:
            try:
                more = sock.recv(1 << 16)
            except OSError:
                return
            if not more:
                return
            buf += more
        request, buf = pickle.loads(buf[4 : 4 + size]), buf[4 + size :]
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(status_r)
                os.close(status_w)
                _become_worker(sock, wake_r, wake_w, status, fds[0], request)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(fds[0])
        status[pid] = status_w
        try:
            socket.send_fds(sock, [_STATUS.pack(pid)], [status_r])
        except OSError:  # the host went away mid-request: so does the zygote (and, with it, the worker)
            return
        finally:
            os.close(status_r)
        _reap(status)


def _reap(status: dict[int, int]) -> None:
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status.pop(pid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, _STATUS.pack(os.waitstatus_to_exitcode(code)))
            os.close(fd)


def _spawned_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fd, request = int(sys.argv[2]), pickle.loads(bytes.fromhex(sys.argv[3]))
    (target, *args), sys_path, cwd = request
    sys.path[:] = sys_path
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    target(Connection(fd), *args)


def _become_worker(sock, wake_r: int, wake_w: int, status: dict[int, int], fd: int, request) -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sock.close()
    for other in (wake_r, wake_w, *status.values()):
        os.close(other)
    (target, *args), sys_path, cwd = request
    platform.die_with_parent(signal.SIGKILL)  # the zygote goes when the host goes
    sys.path[:] = sys_path
    with contextlib.suppress(OSError):
        os.chdir(cwd)
    target(Connection(fd), *args)
